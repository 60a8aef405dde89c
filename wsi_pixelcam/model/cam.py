"""Class activation maps of a (teacher) PixelCAM's image head, at feature resolution.

All three flavours read the same feature map as the pixel head, so their seeds line up with the
pixel-head grid. Gradients are taken with respect to the feature map through the image head
only; the encoder runs once without a graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsi_pixelcam.cam_method import CamMethod
from wsi_pixelcam.errors import ModelError
from wsi_pixelcam.model.pixelcam import PixelCAM


def compute_cam(
    model: PixelCAM,
    images: torch.Tensor,
    class_idx: int | torch.Tensor,
    method: CamMethod = CamMethod.CAM,
) -> torch.Tensor:
    """CAM of class ``class_idx`` (an int or one index per image) as (B, h, w) in [0, 1].

    Each map is min-max normalised on its own (a constant map becomes zeros); gradient CAMs
    are ReLU'd first. The caller chooses train/eval mode (use eval for a CAM dump).
    """
    if method not in tuple(CamMethod):
        raise ModelError(f"unknown CAM method {method!r}; choose one of {', '.join(CamMethod)}")
    with torch.no_grad():
        features = model.encoder(images)
    batch = features.shape[0]
    classes = torch.as_tensor(class_idx, device=features.device).long().expand(batch)
    if method == CamMethod.CAM:
        weights = model.classifier.weight.detach()[classes]  # (B, C)
        maps = torch.einsum("bc,bchw->bhw", weights, features.float())
        return minmax_normalise(maps)
    with torch.enable_grad():
        leaf = features.detach().float().requires_grad_(True)
        logits = model.classify(leaf)
        score = logits.gather(1, classes[:, None]).sum()
        (grads,) = torch.autograd.grad(score, leaf)
    acts = leaf.detach()
    if method == CamMethod.LAYERCAM:
        maps = (F.relu(grads) * acts).sum(dim=1)
    else:
        maps = _gradcampp(acts, grads)
    return minmax_normalise(F.relu(maps))


def _gradcampp(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """GradCAM++ channel weights (Chattopadhay et al. 2018, exponential-score closed form)."""
    grads2 = grads.pow(2)
    denom = 2 * grads2 + acts.sum(dim=(2, 3), keepdim=True) * grads.pow(3)
    alpha = grads2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    weights = (alpha * F.relu(grads)).sum(dim=(2, 3), keepdim=True)
    return (weights * acts).sum(dim=1)


def minmax_normalise(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each (h, w) map of a (B, h, w) batch to [0, 1]; constant maps become zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > eps, (flat - low) / span.clamp_min(eps), torch.zeros_like(flat))
    return scaled.view_as(maps)


def upsample_map(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (B, h, w) maps to (B, *size) (align_corners=False)."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]
