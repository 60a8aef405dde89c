"""The PixelCAM network: one encoder feeding an image classifier and a pixel fg/bg classifier.

The same class is the teacher (stage 1 of PIXELCAM.md): train it with the image loss only
(``pixelcam_loss(..., seeds=None)``); its pixel head then never receives a gradient and stays
unused, and its CAMs come from :mod:`wsi_pixelcam.model.cam`. Stage 3 loads the teacher's
weights into a fresh PixelCAM and trains both heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsi_pixelcam.errors import ModelError
from wsi_pixelcam.model.encoders import Encoder, EncoderSpec, build_encoder


@dataclass(frozen=True)
class PixelCAMSpec:
    """What rebuilds a PixelCAM's architecture."""

    encoder: EncoderSpec
    num_classes: int
    dropout: float = 0.0


@dataclass(frozen=True)
class PixelCAMOutput:
    """One forward pass: image logits (B, K), pixel logits (B, 2, h, w), features (B, C, h, w).

    Pixel channel 0 is background, channel 1 foreground.
    """

    image_logits: torch.Tensor
    pixel_logits: torch.Tensor
    features: torch.Tensor


class PixelCAM(nn.Module):
    """Encoder + image head (GAP -> linear) + pixel head (one 1x1 conv C -> 2, with bias)."""

    def __init__(self, encoder: Encoder, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if num_classes < 2:
            raise ModelError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"dropout={dropout}: must be in [0, 1)")
        self.encoder = encoder
        self.num_classes = num_classes
        # Dropout2d drops whole channels of the map, for the image branch only.
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(encoder.out_channels, num_classes)
        self.pixel_head = nn.Conv2d(encoder.out_channels, 2, kernel_size=1, bias=True)
        self.spec = PixelCAMSpec(encoder.spec, num_classes, dropout)

    def forward(self, images: torch.Tensor) -> PixelCAMOutput:
        features = self.encoder(images)
        return PixelCAMOutput(self.classify(features), self.pixel_head(features), features)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Image logits from a feature map (the image head alone, reused by gradient CAMs)."""
        return self.classifier(self.dropout(features).mean(dim=(2, 3)))

    @staticmethod
    def foreground_map(pixel_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Foreground probability (B, H, W): softmax channel 1, bilinearly upsampled to ``size``.

        Already a probability and class-agnostic, so no min-max normalisation.
        """
        prob = torch.softmax(pixel_logits.float(), dim=1)[:, 1:2]
        return F.interpolate(prob, size=size, mode="bilinear", align_corners=False)[:, 0]

    def param_groups(self, base_lr: float, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """SGD parameter groups: the last encoder stage and both heads at ``head_lr_mult`` x.

        Frozen parameters (``requires_grad=False``) are left out.
        """
        fast_ids = {id(p) for p in self.encoder.last_stage_params()}
        fast = [p for p in self.encoder.parameters() if id(p) in fast_ids]
        fast += [*self.classifier.parameters(), *self.pixel_head.parameters()]
        slow = [p for p in self.encoder.parameters() if id(p) not in fast_ids]
        groups = [
            {"name": "encoder", "params": [p for p in slow if p.requires_grad], "lr": base_lr},
            {
                "name": "last_stage_and_heads",
                "params": [p for p in fast if p.requires_grad],
                "lr": base_lr * head_lr_mult,
            },
        ]
        return [g for g in groups if g["params"]]


def build_pixelcam(spec: PixelCAMSpec, *, pretrained: bool | str | Path | None = False) -> PixelCAM:
    """Build a PixelCAM from its spec; ``pretrained`` applies to the encoder (see build_encoder)."""
    encoder = build_encoder(
        spec.encoder.name,
        pretrained=pretrained,
        output_stride=spec.encoder.output_stride,
        stride8_no_dilation=spec.encoder.stride8_no_dilation,
    )
    return PixelCAM(encoder, spec.num_classes, spec.dropout)
