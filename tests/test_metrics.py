"""WSOL metrics against brute force: loop over thresholds, count pixels, integrate by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from wsi_pixelcam.errors import DataError
from wsi_pixelcam.metrics import (
    THRESHOLDS,
    AccuracyAccumulator,
    LocalizationAccumulator,
)


def _random_set(seed: int, n: int = 6, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Maps on a 0.001 lattice (values hit thresholds and 1.0 exactly) and blob masks."""
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, 1001, (n, size, size)) / 1000
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for index in range(n - 1):  # the last patch is all background, like a normal patch
        y, x = rng.integers(0, size - 4, 2)
        masks[index, y : y + 5, x : x + 4] = 1
        maps[index, y : y + 5, x : x + 4] = np.minimum(maps[index, y : y + 5, x : x + 4] + 0.3, 1)
    return maps, masks


def _brute_pxap(maps: np.ndarray, masks: np.ndarray) -> float:
    values, fg = maps.ravel(), masks.ravel() > 0.5
    ap, previous_recall = 0.0, 0.0
    for tau in [1.0, *THRESHOLDS[::-1]]:  # high to low; ">= 1.0" opens the curve
        predicted = values >= tau
        tp, fp = np.sum(predicted & fg), np.sum(predicted & ~fg)
        recall = tp / fg.sum()
        if tp + fp > 0:
            ap += tp / (tp + fp) * (recall - previous_recall)
        previous_recall = recall
    return 100.0 * ap


def _brute_scores(maps: np.ndarray, masks: np.ndarray, tau: float) -> dict[str, float]:
    predicted, fg = maps.ravel() >= tau, masks.ravel() > 0.5
    tp, fp = np.sum(predicted & fg), np.sum(predicted & ~fg)
    fn, tn = np.sum(~predicted & fg), np.sum(~predicted & ~fg)
    iou_fg, iou_bg = tp / (tp + fp + fn), tn / (tn + fn + fp)
    return {
        "dice_fg": 100 * 2 * tp / (2 * tp + fp + fn),
        "iou_fg": 100 * iou_fg,
        "iou_bg": 100 * iou_bg,
        "miou": 100 * (iou_fg + iou_bg) / 2,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pxap_and_scores_match_brute_force(seed: int) -> None:
    maps, masks = _random_set(seed)
    acc = LocalizationAccumulator(eval_px=12)
    acc.update(maps, masks)
    assert acc.pxap() == pytest.approx(_brute_pxap(maps, masks), abs=1e-9)
    for tau in (0.0, 0.25, 0.5, 0.731, 0.999):
        got = acc.scores_at(tau)
        expected = _brute_scores(maps, masks, tau)
        assert got.tau == pytest.approx(tau)
        for key, value in expected.items():
            assert getattr(got, key) == pytest.approx(value, abs=1e-9), key
    best_miou = max(THRESHOLDS, key=lambda t: _brute_scores(maps, masks, t)["miou"])
    assert acc.best_tau() == pytest.approx(best_miou)
    best_dice = max(THRESHOLDS, key=lambda t: _brute_scores(maps, masks, t)["dice_fg"])
    assert acc.best_tau("dice_fg") == pytest.approx(best_dice)


def test_streaming_is_dataset_level() -> None:
    maps, masks = _random_set(3)
    whole = LocalizationAccumulator(eval_px=12)
    whole.update(maps, masks)
    streamed = LocalizationAccumulator(eval_px=12)
    for one_map, one_mask in zip(maps, masks, strict=True):
        streamed.update(one_map, one_mask)
    assert streamed.pxap() == whole.pxap()
    # dataset level differs from the mean of per-patch PxAPs
    per_patch = []
    for one_map, one_mask in zip(maps[:-1], masks[:-1], strict=True):
        single = LocalizationAccumulator(eval_px=12)
        single.update(one_map, one_mask)
        per_patch.append(single.pxap())
    assert whole.pxap() != pytest.approx(np.mean(per_patch))


def test_perfect_maps_score_100() -> None:
    _, masks = _random_set(4)
    binary = LocalizationAccumulator(eval_px=12)
    binary.update(masks.astype(float), masks)
    assert binary.pxap() == pytest.approx(100.0)
    assert binary.scores_at(0.5).dice_fg == pytest.approx(100.0)
    assert binary.scores_at(0.5).miou == pytest.approx(100.0)
    graded = LocalizationAccumulator(eval_px=12)
    graded.update(np.where(masks > 0, 0.6, 0.2), masks * 255)  # 0/255 masks, fg = > 0.5
    assert graded.pxap() == pytest.approx(100.0)


def test_resizes_to_eval_size() -> None:
    mask = np.zeros((4, 4))
    mask[1:3, 0:2] = 1.0
    small_map = np.full((2, 2), 0.3)
    acc = LocalizationAccumulator(eval_px=8)
    acc.update(small_map[None], mask[None])
    # nearest 4 -> 8 keeps 4 fg pixels as 16; a constant map stays constant under bilinear
    scores = acc.scores_at(0.3)
    assert scores.iou_fg == pytest.approx(100 * 16 / 64)
    assert acc.scores_at(0.301).iou_bg == pytest.approx(100 * 48 / 64)


def test_bad_inputs() -> None:
    acc = LocalizationAccumulator(eval_px=4)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        acc.update(np.full((1, 4, 4), 1.5), np.zeros((1, 4, 4)))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        acc.update(np.full((1, 4, 4), np.nan), np.zeros((1, 4, 4)))
    with pytest.raises(DataError, match="matching"):
        acc.update(np.zeros((2, 4, 4)), np.zeros((1, 4, 4)))
    acc.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(DataError, match="no ground-truth foreground"):
        acc.pxap()
    acc.update(np.full((1, 4, 4), 1 + 1e-7), np.ones((1, 4, 4)))  # float32 overshoot is fine
    assert acc.scores_at(0.999).iou_fg == pytest.approx(100.0)


def test_top1_accuracy() -> None:
    acc = AccuracyAccumulator()
    acc.update(np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0]]), np.array([1, 0, 0]))
    acc.update(np.array([[5.0, 1.0]]), np.array([0]))
    assert acc.accuracy() == pytest.approx(75.0)
    with pytest.raises(DataError):
        AccuracyAccumulator().accuracy()


def test_metrics_need_no_torch() -> None:
    code = "import sys, wsi_pixelcam.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_update_pixels_bins_as_update_does_at_the_eval_size() -> None:
    rng = np.random.default_rng(3)
    maps = rng.uniform(0, 1, (3, 16, 16))
    masks = rng.uniform(0, 1, (3, 16, 16)) > 0.6
    resized, raw = LocalizationAccumulator(eval_px=16), LocalizationAccumulator(eval_px=16)
    resized.update(maps, masks)
    for one_map, one_mask in zip(maps, masks, strict=True):
        raw.update_pixels(one_map, one_mask)
    assert raw.pixel_totals() == resized.pixel_totals() == (int(masks.sum()), int((~masks).sum()))
    assert raw.pxap() == resized.pxap()
    assert raw.scores_at(0.5) == resized.scores_at(0.5)
