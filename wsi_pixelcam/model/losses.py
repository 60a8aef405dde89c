"""PixelCAM's training objective: image cross-entropy plus lambda x partial pixel cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from wsi_pixelcam.model.seeds import IGNORE_INDEX

if TYPE_CHECKING:  # annotation only: keeps this module free of timm
    from wsi_pixelcam.model.pixelcam import PixelCAMOutput


@dataclass(frozen=True)
class LossParts:
    """The total loss (backpropagate this) and its two terms, for logging."""

    total: torch.Tensor
    image: torch.Tensor
    pixel: torch.Tensor


def partial_cross_entropy(
    pixel_logits: torch.Tensor, seeds: torch.Tensor, *, balanced: bool = False
) -> torch.Tensor:
    """2-class cross-entropy over seeded pixels only.

    ``pixel_logits`` (B, 2, h, w), ``seeds`` (B, h, w) with 0/1 or IGNORE_INDEX. Averaged
    over all seeds of the batch, or with ``balanced`` the mean of the foreground seeds' and
    the background seeds' averages: where most patches are negative (background seeds
    only), plain averaging lets background seeds outnumber foreground ones 10 to 1 and
    teaches the pixel head "background everywhere". A batch without seeds gives exactly 0
    (still attached to the graph), never NaN.
    """
    if seeds.shape != (pixel_logits.shape[0], *pixel_logits.shape[2:]):
        raise ValueError(
            f"seeds {tuple(seeds.shape)} do not match pixel logits {tuple(pixel_logits.shape)}; "
            "draw seeds on the feature grid"
        )
    per_pixel = F.cross_entropy(
        pixel_logits.float(), seeds.long(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    if not balanced:
        return per_pixel.sum() / (seeds != IGNORE_INDEX).sum().clamp_min(1)
    means = [
        per_pixel[seeds == value].sum() / (seeds == value).sum()
        for value in (0, 1)
        if bool((seeds == value).any())
    ]
    return torch.stack(means).mean() if means else per_pixel.sum() * 0.0


def pixelcam_loss(
    output: PixelCAMOutput,
    labels: torch.Tensor,
    seeds: torch.Tensor | None,
    lam: float = 1.0,
    *,
    balanced_seeds: bool = False,
) -> LossParts:
    """CE(image_logits, labels) + ``lam`` * partial CE(pixel_logits, seeds).

    ``seeds=None`` (or ``lam=0``) trains a teacher: the pixel term is zero.
    ``balanced_seeds`` weighs foreground and background seeds equally (see
    :func:`partial_cross_entropy`).
    """
    image = F.cross_entropy(output.image_logits.float(), labels.long())
    if seeds is None or lam == 0:
        pixel = output.pixel_logits.new_zeros((), dtype=torch.float32)
    else:
        pixel = partial_cross_entropy(output.pixel_logits, seeds, balanced=balanced_seeds)
    return LossParts(image + lam * pixel, image, pixel)
