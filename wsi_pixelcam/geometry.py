"""Pure arithmetic on slide frames: resolutions, pyramid levels and patch grids.

Level-0 is the slide's full-resolution pixel frame (what QuPath shows, up to the bounds
offset). "Target" pixels are pixels at the requested microns-per-pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LevelChoice:
    """Which pyramid level to read and how to resample it to the target resolution."""

    level: int
    level_downsample: float
    scale_level0: float  # level-0 pixels per target pixel, after any snapping
    resize_factor: float  # level pixels per target pixel; 1.0 means read as is

    @property
    def needs_resize(self) -> bool:
        return self.resize_factor != 1.0


def choose_level(
    level_downsamples: Sequence[float], mpp_level0: float, target_mpp: float, tolerance: float
) -> LevelChoice:
    """Pick the coarsest level that is at least as fine as the target.

    A level whose resolution is within ``tolerance`` (relative) of the target is read without
    resampling and the effective target becomes that level's exact resolution; otherwise the
    chosen level is downsampled (never upsampled when a finer level exists).
    """
    scale = target_mpp / mpp_level0
    best = 0
    for index, ds in enumerate(level_downsamples):
        if ds <= scale * (1 + tolerance) and ds >= level_downsamples[best]:
            best = index
    ds = float(level_downsamples[best])
    if abs(ds - scale) <= tolerance * scale:
        return LevelChoice(best, ds, ds, 1.0)
    return LevelChoice(best, ds, scale, scale / ds)


def grid_starts(extent_px: int, patch_px: int, stride_px: int) -> np.ndarray:
    """Start offsets of the patches that fit entirely inside ``extent_px``."""
    if extent_px < patch_px:
        return np.zeros(0, dtype=np.int64)
    count = (extent_px - patch_px) // stride_px + 1
    return np.arange(count, dtype=np.int64) * stride_px


def target_extent(level0_px: int, scale_level0: float) -> int:
    """Size in target pixels of a level-0 extent (floor: partial pixels are not tiled)."""
    return math.floor(level0_px / scale_level0 + 1e-9)


def box_sum(
    integral: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray
) -> np.ndarray:
    """Exact sum of a piecewise-constant image over fractional boxes.

    ``integral`` is the summed-area table with a leading row and column of zeros, shape
    (H + 1, W + 1). Within each pixel the table is bilinear in (x, y), so interpolating it
    gives the exact integral over boxes whose corners fall inside pixels.
    """

    def at(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        h, w = integral.shape[0] - 1, integral.shape[1] - 1
        x = np.clip(x, 0, w)
        y = np.clip(y, 0, h)
        xi = np.minimum(np.floor(x).astype(np.int64), w - 1)
        yi = np.minimum(np.floor(y).astype(np.int64), h - 1)
        fx, fy = x - xi, y - yi
        i00 = integral[yi, xi]
        i01 = integral[yi, xi + 1]
        i10 = integral[yi + 1, xi]
        i11 = integral[yi + 1, xi + 1]
        return i00 * (1 - fx) * (1 - fy) + i01 * fx * (1 - fy) + i10 * (1 - fx) * fy + i11 * fx * fy

    return at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0)


def summed_area_table(image: np.ndarray) -> np.ndarray:
    """Summed-area table padded with a zero row and column (see :func:`box_sum`)."""
    table = np.zeros((image.shape[0] + 1, image.shape[1] + 1), dtype=np.float64)
    table[1:, 1:] = image.astype(np.float64).cumsum(0).cumsum(1)
    return table
