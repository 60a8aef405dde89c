"""Real tiny PixelCAMs (timm ``test_resnet``) with outputs known in advance, for inference tests.

A pixel head with zero weights and bias (0, logit(fg)) predicts foreground probability ``fg``
at every pixel, and a classifier with zero weights and bias log(p) predicts ``p``: the encoder
still runs on every patch, but the stitched heatmap, the ROIs and the slide prediction have
exact expected values.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import torch

from wsi_pixelcam.model.checkpoint import CheckpointMeta, save_checkpoint
from wsi_pixelcam.model.encoders import build_encoder
from wsi_pixelcam.model.pixelcam import PixelCAM

MPP = 0.5
PATCH_PX = 128  # 256 level-0 px on the 0.25 um/px test slides
INPUT_PX = 32


def constant_model(fg: float, class_probs: tuple[float, ...] = (0.3, 0.7)) -> PixelCAM:
    torch.manual_seed(0)
    net = PixelCAM(build_encoder("test_resnet", stride8_no_dilation=True), len(class_probs))
    with torch.no_grad():
        net.pixel_head.weight.zero_()
        net.pixel_head.bias.copy_(torch.tensor([0.0, math.log(fg / (1 - fg))]))
        net.classifier.weight.zero_()
        net.classifier.bias.copy_(torch.log(torch.tensor(class_probs)))
    return net.eval()


def random_model(n_classes: int = 2) -> PixelCAM:
    torch.manual_seed(0)
    return PixelCAM(build_encoder("test_resnet", stride8_no_dilation=True), n_classes).eval()


def meta(**changes: object) -> CheckpointMeta:
    values: dict = {
        "class_names": ("normal", "Tumor"),
        "input_px": INPUT_PX,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "mpp": MPP,
        "patch_px": PATCH_PX,
    }
    values.update(changes)
    return CheckpointMeta(**values)


def save(path: Path, net: PixelCAM, **meta_changes: object) -> Path:
    return save_checkpoint(path, net, meta(**meta_changes))
