"""Localisation and classification metrics as the WSOL literature computes them.

Maps and masks are compared at a fixed evaluation size. Map values at ground-truth foreground
and background pixels are binned over the thresholds {0, 0.001, ..., 0.999} for every pixel of
every patch of a split (dataset level, not per patch), so a split of any size streams through
in constant memory. PxAP is the area under that dataset-level precision-recall curve
(Choe et al., CVPR 2020); Dice and IoU are read off the same counts at one threshold.
Everything here is numpy: evaluation needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from skimage.transform import resize

from wsi_pixelcam.errors import DataError

N_THRESHOLDS = 1000
THRESHOLDS = np.arange(N_THRESHOLDS) / N_THRESHOLDS
"""{0, 0.001, ..., 0.999}: the operating points of Dice/IoU and the best-tau search."""
# Bin edges: one bin per threshold, then a bin for values of exactly 1.0 (a min-max
# normalised CAM's peak), whose ">= 1.0" point opens the precision-recall curve.
_EDGES = np.append(THRESHOLDS, 1.0)
_TOLERANCE = 1e-5


@dataclass(frozen=True)
class LocalizationScores:
    """Pixel scores in percent at threshold ``tau`` (a pixel is fg where map >= tau)."""

    tau: float
    dice_fg: float
    iou_fg: float
    iou_bg: float
    miou: float


class LocalizationAccumulator:
    """Streams (map, mask) pairs; reports PxAP and Dice/IoU at any threshold."""

    def __init__(self, eval_px: int = 224):
        if eval_px < 1:
            raise DataError(f"eval_px={eval_px}: must be >= 1")
        self.eval_px = eval_px
        self._fg_hist = np.zeros(len(_EDGES), dtype=np.int64)
        self._bg_hist = np.zeros(len(_EDGES), dtype=np.int64)

    def update(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """Add a batch: maps (N, H, W) or (H, W) in [0, 1]; masks of any size, fg = value > 0.5.

        Maps are resized bilinearly and masks by nearest neighbour to ``eval_px`` square.
        """
        maps = np.asarray(maps, dtype=np.float64)
        masks = np.asarray(masks)
        if maps.ndim == 2:
            maps, masks = maps[None], masks[None]
        if maps.ndim != 3 or masks.ndim != 3 or len(maps) != len(masks):
            raise DataError(
                f"maps {maps.shape} and masks {masks.shape}: expected matching (N, H, W) batches"
            )
        if not np.isfinite(maps).all() or maps.min() < -_TOLERANCE or maps.max() > 1 + _TOLERANCE:
            raise DataError("localisation maps must be finite and in [0, 1]; normalise CAMs first")
        maps = np.clip(maps, 0.0, 1.0)  # float32 interpolation may overshoot by an ulp
        for one_map, one_mask in zip(maps, masks, strict=True):
            self.update_pixels(
                self._at_eval_size(one_map, order=1), self._at_eval_size(one_mask > 0.5, order=0)
            )

    def merge(self, other: LocalizationAccumulator) -> None:
        """Add the counts of another part of the same evaluation (another rank's share)."""
        if other.eval_px != self.eval_px:
            raise DataError(f"cannot merge maps compared at {other.eval_px} and {self.eval_px} px")
        self._fg_hist += other._fg_hist
        self._bg_hist += other._bg_hist

    def update_pixels(self, values: np.ndarray, fg: np.ndarray) -> None:
        """Add pixels as they are, no resizing: ``values`` in [0, 1], ``fg`` boolean, same shape.

        Slide-level evaluation feeds heatmap chunks through this.
        """
        bins = np.searchsorted(_EDGES, np.asarray(values).ravel(), side="right") - 1
        fg_flat = np.asarray(fg, dtype=bool).ravel()
        self._fg_hist += np.bincount(bins[fg_flat], minlength=len(_EDGES))
        self._bg_hist += np.bincount(bins[~fg_flat], minlength=len(_EDGES))

    def pixel_totals(self) -> tuple[int, int]:
        """Ground-truth foreground and background pixels seen so far."""
        return int(self._fg_hist.sum()), int(self._bg_hist.sum())

    def _at_eval_size(self, array: np.ndarray, order: int) -> np.ndarray:
        size = (self.eval_px, self.eval_px)
        if array.shape == size:
            return array
        return np.asarray(
            resize(array, size, order=order, mode="edge", anti_aliasing=False, preserve_range=True)
        )

    def _counts(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """TP and FP at ">= edge" for every edge, with the fg and bg pixel totals."""
        tp = self._fg_hist[::-1].cumsum()[::-1]
        fp = self._bg_hist[::-1].cumsum()[::-1]
        n_fg, n_bg = int(self._fg_hist.sum()), int(self._bg_hist.sum())
        if n_fg == 0:
            raise DataError(
                "no ground-truth foreground pixel in the evaluated masks: PxAP, Dice and IoU "
                "are undefined; evaluate on a split that contains annotated regions"
            )
        return tp, fp, n_fg, n_bg

    def pxap(self) -> float:
        """Area under the dataset-level pixel precision-recall curve, in percent."""
        tp, fp, n_fg, _ = self._counts()
        # walk thresholds from high to low so recall grows from 0
        tp, fp = tp[::-1], fp[::-1]
        recall = np.concatenate([[0.0], tp / n_fg])
        predicted = tp + fp
        precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
        return float(100.0 * np.sum(precision * np.diff(recall) * (predicted > 0)))

    def scores_at(self, tau: float) -> LocalizationScores:
        """Dice/IoU at the listed threshold nearest to ``tau``."""
        index = int(np.argmin(np.abs(THRESHOLDS - tau)))
        curves = self._curves()
        return LocalizationScores(float(THRESHOLDS[index]), *(float(c[index]) for c in curves))

    def best_tau(self, metric: Literal["miou", "dice_fg"] = "miou") -> float:
        """The threshold that maximises ``metric``: choose it on validation, apply it on test."""
        dice_fg, _, _, miou = self._curves()
        if metric not in ("miou", "dice_fg"):
            raise DataError(f"unknown metric {metric!r}; use 'miou' or 'dice_fg'")
        return float(THRESHOLDS[int(np.argmax(miou if metric == "miou" else dice_fg))])

    def _curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Dice_fg, IoU_fg, IoU_bg and mIoU in percent at every threshold of THRESHOLDS."""
        tp, fp, n_fg, n_bg = self._counts()
        tp, fp = tp[:N_THRESHOLDS], fp[:N_THRESHOLDS]
        fn, tn = n_fg - tp, n_bg - fp
        dice_fg = 100.0 * _ratio(2 * tp, 2 * tp + fp + fn)
        iou_fg = 100.0 * _ratio(tp, tp + fp + fn)
        iou_bg = 100.0 * _ratio(tn, tn + fn + fp)
        return dice_fg, iou_fg, iou_bg, 0.5 * (iou_fg + iou_bg)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0."""
    num = num.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


class AccuracyAccumulator:
    """Top-1 classification accuracy, streamed over batches."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch of scores (N, K) (logits or probabilities) and labels (N,)."""
        logits = np.asarray(logits)
        labels = np.asarray(labels)
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise DataError(
                f"logits {logits.shape} and labels {labels.shape}: expected (N, K), (N,)"
            )
        self.correct += int((logits.argmax(axis=1) == labels).sum())
        self.total += len(labels)

    def merge(self, other: AccuracyAccumulator) -> None:
        """Add the counts of another part of the same evaluation (another rank's share)."""
        self.correct += other.correct
        self.total += other.total

    def accuracy(self) -> float:
        """Percent of correct top-1 predictions."""
        if self.total == 0:
            raise DataError("accuracy of an empty evaluation set is undefined")
        return 100.0 * self.correct / self.total
