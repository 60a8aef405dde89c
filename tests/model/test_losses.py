"""Partial cross-entropy: only seeded pixels count, averaged over the batch's seeds."""

from __future__ import annotations

import math

import pytest
import torch

from wsi_pixelcam.model.losses import partial_cross_entropy, pixelcam_loss
from wsi_pixelcam.model.pixelcam import PixelCAMOutput
from wsi_pixelcam.model.seeds import IGNORE_INDEX


def _seeds() -> torch.Tensor:
    seeds = torch.full((2, 3, 3), IGNORE_INDEX, dtype=torch.long)
    seeds[0, 0, 0] = 1
    seeds[1, 2, 1] = 0
    seeds[1, 1, 1] = 1
    seeds[1, 0, 2] = 0
    return seeds


def test_matches_mean_over_all_seeds_of_the_batch() -> None:
    logits = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    seeds = _seeds()
    terms = []
    for b, y, x in (seeds != IGNORE_INDEX).nonzero().tolist():
        log_probs = torch.log_softmax(logits[b, :, y, x], dim=0)
        terms.append(-log_probs[seeds[b, y, x]])
    expected = torch.stack(terms).mean()  # 4 seeds, not the mean of per-image means
    assert torch.allclose(partial_cross_entropy(logits, seeds), expected, atol=1e-6)


def test_unseeded_pixels_do_not_matter() -> None:
    logits = torch.randn(2, 2, 3, 3, requires_grad=True)
    seeds = _seeds()
    loss = partial_cross_entropy(logits, seeds)
    changed = logits.detach().clone()
    changed[seeds[:, None].expand_as(changed) == IGNORE_INDEX] = 100.0
    assert torch.allclose(partial_cross_entropy(changed, seeds), loss)
    loss.backward()
    assert logits.grad is not None
    grad_unseeded = logits.grad.permute(0, 2, 3, 1)[seeds == IGNORE_INDEX]
    assert torch.count_nonzero(grad_unseeded) == 0


def test_no_seeds_gives_zero_with_a_graph() -> None:
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    seeds = torch.full((2, 4, 4), IGNORE_INDEX, dtype=torch.long)
    loss = partial_cross_entropy(logits, seeds)
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_mismatched_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="feature grid"):
        partial_cross_entropy(torch.randn(1, 2, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))


def test_pixelcam_loss_combines_terms() -> None:
    generator = torch.Generator().manual_seed(1)
    out = PixelCAMOutput(
        image_logits=torch.randn(2, 3, generator=generator),
        pixel_logits=torch.randn(2, 2, 3, 3, generator=generator),
        features=torch.zeros(2, 1, 3, 3),
    )
    labels = torch.tensor([2, 0])
    parts = pixelcam_loss(out, labels, _seeds(), lam=0.5)
    image = torch.nn.functional.cross_entropy(out.image_logits, labels)
    assert torch.allclose(parts.image, image)
    assert torch.allclose(parts.pixel, partial_cross_entropy(out.pixel_logits, _seeds()))
    assert torch.allclose(parts.total, image + 0.5 * parts.pixel)
    teacher = pixelcam_loss(out, labels, None)
    assert teacher.pixel.item() == 0.0 and torch.allclose(teacher.total, image)


def test_balanced_weighs_foreground_and_background_seeds_equally() -> None:
    """One foreground seed against nine background ones: each side is half the loss."""
    logits = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    seeds = torch.full((1, 4, 4), IGNORE_INDEX, dtype=torch.long)
    seeds.view(-1)[:9] = 0
    seeds.view(-1)[9] = 1
    log_probs = torch.log_softmax(logits, dim=1)
    fg = -log_probs[0, 1].reshape(-1)[9]
    bg = -log_probs[0, 0].reshape(-1)[:9].mean()
    balanced = partial_cross_entropy(logits, seeds, balanced=True)
    assert torch.allclose(balanced, (fg + bg) / 2, atol=1e-6)
    plain = partial_cross_entropy(logits, seeds)
    assert torch.allclose(plain, (fg + 9 * bg) / 10, atol=1e-6)


def test_balanced_with_one_kind_of_seed_or_none() -> None:
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    background_only = torch.full((1, 3, 3), IGNORE_INDEX, dtype=torch.long)
    background_only[0, 0] = 0
    assert torch.allclose(
        partial_cross_entropy(logits, background_only, balanced=True),
        partial_cross_entropy(logits, background_only),
    )
    none = torch.full((1, 3, 3), IGNORE_INDEX, dtype=torch.long)
    empty = partial_cross_entropy(logits, none, balanced=True)
    assert empty.item() == 0.0 and empty.requires_grad
