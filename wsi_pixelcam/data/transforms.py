"""The paper's input pipeline: train (resize, random crop, flips, jitter) and eval (resize).

Geometry changes the image and its CAM alike; colour jitter touches the image only; both end
with per-channel normalisation. The shared geometric step is passed in (``geometry``) rather
than imported: it lives with the seeds in :mod:`wsi_pixelcam.model.seeds`, and ``data`` and
``model`` are independent layers. The training stage wires the two together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb, rgb_from_hed
from torchvision.transforms import v2

PairGeometry = Callable[
    [torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]
]
"""(image (3, H, W) float in [0, 1], CAM (h, w) or None) -> both resized, cropped and flipped."""

Transform = Callable[[np.ndarray, np.ndarray | None], tuple[torch.Tensor, torch.Tensor | None]]
"""(patch (P, P, 3) uint8, stored CAM (h, w) or None) -> (network input, CAM or None)."""


def to_float_image(patch: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float().div_(255.0)


def _normalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel normalisation of (..., 3, H, W) images, on whatever device they are."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    return (image - mean_t) / std_t


def eval_input(
    images: torch.Tensor, input_px: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(B, 3, H, W) floats in [0, 1] -> the model's normalised (B, 3, input_px, input_px) input.

    The whole patch is resized (no crop), so a map covers the patch's full footprint. One
    function for evaluation and inference, on the CPU or on the GPU, so both feed the model
    exactly what validation measured.
    """
    if images.shape[-2:] != (input_px, input_px):
        images = F.interpolate(
            images, size=(input_px, input_px), mode="bilinear", align_corners=False,
            antialias=True,
        ).clamp_(0.0, 1.0)  # fmt: skip
    return _normalise(images, mean, std)


def uint8_eval_input(
    patches: torch.Tensor, input_px: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> :func:`eval_input`, on the device ``patches`` are on.

    Inference moves uint8 batches (a quarter of float32's bytes) and converts them where the
    model runs; the eval transform uses the same function on the CPU, one patch at a time.
    """
    images = patches.permute(0, 3, 1, 2).float().div_(255.0)
    return eval_input(images, input_px, mean, std)


def _cam_tensor(cam: np.ndarray | None) -> torch.Tensor | None:
    return None if cam is None else torch.from_numpy(np.asarray(cam, dtype=np.float32))


@dataclass(frozen=True)
class EvalTransform:
    """Resize the whole patch to ``input_px`` square, then normalise; the CAM passes as is."""

    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(
        self, patch: np.ndarray, cam: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pixels = torch.from_numpy(np.ascontiguousarray(patch))[None]
        image = uint8_eval_input(pixels, self.input_px, self.mean, self.std)[0]
        return image, _cam_tensor(cam)


# RGB <-> YIQ (NTSC): hue is the angle of (I, Q), luma Y is left alone by a rotation
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rotate_hue(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Shift the hue of a (3, H, W) float image by ``factor`` turns (torchvision's hue unit).

    A rotation of the chroma plane in YIQ space: one 3x3 matrix per image, many times faster
    than torchvision's HSV round trip, which took half of a loader worker's time per patch.
    It preserves luma rather than HSV value, so it moves hue the same way as torchvision's
    shift, by 0.75 to 1.4 times as much on tissue colours; the result is clamped to [0, 1].
    """
    angle = -2.0 * math.pi * factor  # the sign that turns red towards yellow, as HSV does
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]], dtype=torch.float64
    )
    matrix = (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).to(image.dtype)
    return torch.einsum("ij,jhw->ihw", matrix, image).clamp_(0.0, 1.0)


_HED_FROM_RGB = torch.from_numpy(hed_from_rgb).float()
_RGB_FROM_HED = torch.from_numpy(rgb_from_hed).float()
_MIN_TRANSMISSION = 1.0 / 255.0  # keeps optical density finite on saturated pixels


def jitter_stains(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Tellez et al.'s (2019) HED augmentation of a (3, H, W) float image in [0, 1].

    Optical density is unmixed into haematoxylin, eosin and DAB concentrations
    (Ruifrok-Johnston vectors, as scikit-image's ``rgb2hed``); each is scaled by
    U(1 - sigma, 1 + sigma) and shifted by U(-sigma, sigma), then mixed back. It mimics the
    spread of stain strength between labs and scanners, which RGB colour jitter does not.
    """
    density = -torch.log(image.clamp(min=_MIN_TRANSMISSION))
    stains = torch.einsum("chw,cs->shw", density, _HED_FROM_RGB)
    scale = torch.empty(3, 1, 1).uniform_(1.0 - sigma, 1.0 + sigma)
    shift = torch.empty(3, 1, 1).uniform_(-sigma, sigma)
    mixed = torch.einsum("shw,sc->chw", stains * scale + shift, _RGB_FROM_HED)
    return torch.exp(-mixed).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class TrainTransform:
    """``geometry`` on image and CAM together, then stain and colour jitter on the image, then
    normalise.

    ``hed`` is the sigma of :func:`jitter_stains` (0: off), applied before the RGB jitter.

    ``jitter`` is (brightness, contrast, saturation, hue) as torchvision's ColorJitter takes
    them: the first three through ColorJitter (in random order), then a hue shift drawn
    uniformly in [-hue, hue] by :func:`rotate_hue`. Random draws use torch's global
    generator, which the DataLoader seeds per worker from its own seeded generator, so runs
    repeat exactly.
    """

    geometry: PairGeometry
    jitter: tuple[float, float, float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hed: float = 0.0
    _colour: v2.ColorJitter | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        brightness, contrast, saturation, _ = self.jitter
        colour = None
        if any((brightness, contrast, saturation)):
            colour = v2.ColorJitter(brightness, contrast, saturation)
        object.__setattr__(self, "_colour", colour)

    def __call__(
        self, patch: np.ndarray, cam: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, out_cam = self.geometry(to_float_image(patch), _cam_tensor(cam))
        image = image.clamp(0.0, 1.0)
        if self.hed > 0:
            image = jitter_stains(image, self.hed)
        if self._colour is not None:
            image = self._colour(image)
        hue = self.jitter[3]
        if hue > 0:
            image = rotate_hue(image, float(torch.empty(()).uniform_(-hue, hue)))
        return _normalise(image, self.mean, self.std), out_cam
