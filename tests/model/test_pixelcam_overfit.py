"""End to end on CPU: a tiny CNN and a tiny ViT overfit 8 patches with both heads.

Class-1 patches carry a coloured square (the ROI), class-0 patches none. Seeds are redrawn at
every step from a "CAM" that is the square's mask on the feature grid, with class 0 treated as
negative, and the optimiser is the paper's (SGD, Nesterov, 10x LR on last stage and heads).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from wsi_pixelcam.model.encoders import build_encoder
from wsi_pixelcam.model.losses import pixelcam_loss
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.model.seeds import SeedConfig, draw_seeds

PATCH_PX = 32
ROI_PX = 16


def _patches(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.rand(8, 3, PATCH_PX, PATCH_PX, generator=generator) * 0.2
    masks = torch.zeros(8, PATCH_PX, PATCH_PX)
    labels = torch.arange(8) % 2
    colour = torch.tensor([0.8, 0.1, 0.6])[:, None, None]
    for index in range(1, 8, 2):
        y, x = (torch.randint(0, PATCH_PX // ROI_PX, (2,), generator=generator) * ROI_PX).tolist()
        images[index, :, y : y + ROI_PX, x : x + ROI_PX] += colour
        masks[index, y : y + ROI_PX, x : x + ROI_PX] = 1.0
    return images, labels, masks


@pytest.mark.parametrize(
    ("name", "options"),
    [("test_resnet", {"stride8_no_dilation": True}), ("test_vit", {})],
)
def test_both_heads_overfit_a_handful_of_patches(name: str, options: dict[str, bool]) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = PixelCAM(build_encoder(name, **options), num_classes=2)
    images, labels, masks = _patches(generator)
    grid = model(images[:1]).pixel_logits.shape[-2:]
    cams = F.adaptive_avg_pool2d(masks[:, None], grid)[:, 0]
    optimizer = torch.optim.SGD(model.param_groups(3e-3), lr=3e-3, momentum=0.9, nesterov=True)
    config = SeedConfig(n_fg=2, n_bg=2, erode_k=1)
    history = []
    for _ in range(30):
        seeds = draw_seeds(cams, negative=labels == 0, config=config, generator=generator)
        parts = pixelcam_loss(model(images), labels, seeds)
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
        history.append((parts.image.item(), parts.pixel.item()))
    first_image, first_pixel = history[0]
    last_image = sum(h[0] for h in history[-3:]) / 3
    last_pixel = sum(h[1] for h in history[-3:]) / 3
    assert last_image < 0.3 * first_image
    assert last_pixel < 0.3 * first_pixel
    # the learned foreground map ranks ROI pixels above the rest of the positive patches
    model.eval()
    with torch.no_grad():
        fmap = PixelCAM.foreground_map(model(images).pixel_logits, (PATCH_PX, PATCH_PX))
    positives = labels == 1
    roi = masks[positives] > 0.5
    inside, outside = fmap[positives][roi], fmap[positives][~roi]
    ranked_right = (inside[:, None] > outside[None, :]).float().mean()  # ROC AUC
    assert ranked_right > 0.9
