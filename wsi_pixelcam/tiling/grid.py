"""Tile grid: which patches exist, where they sit in level-0, and how much tissue each holds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi_pixelcam.geometry import box_sum, grid_starts, summed_area_table, target_extent


@dataclass(frozen=True)
class Grid:
    """Kept patches in row-major order.

    ``target_xy`` is the top-left in target pixels (multiples of the stride), ``xy_level0`` the
    same point rounded to level-0 pixels, ``tissue_frac`` the exact fraction of the patch
    footprint covered by the tissue mask.
    """

    target_xy: np.ndarray
    xy_level0: np.ndarray
    tissue_frac: np.ndarray
    n_candidates: int

    def __len__(self) -> int:
        return int(self.target_xy.shape[0])


def build_grid(
    dimensions_level0: tuple[int, int],
    scale_level0: float,
    patch_px: int,
    stride_px: int,
    mask: np.ndarray,
    mask_level0_per_px: tuple[float, float],
    min_tissue_frac: float,
) -> Grid:
    """Patches of ``patch_px`` target pixels every ``stride_px`` that fit inside the slide.

    ``scale_level0`` is level-0 pixels per target pixel. Tissue fraction integrates the mask
    over each footprint with fractional pixel coverage, so it does not depend on how the
    footprint falls on the mask grid.
    """
    width_t = target_extent(dimensions_level0[0], scale_level0)
    height_t = target_extent(dimensions_level0[1], scale_level0)
    xs = grid_starts(width_t, patch_px, stride_px)
    ys = grid_starts(height_t, patch_px, stride_px)
    gx, gy = np.meshgrid(xs, ys)  # row-major: y outer, x inner
    tx, ty = gx.ravel(), gy.ravel()
    sx, sy = mask_level0_per_px
    foot = patch_px * scale_level0
    x0, y0 = tx * scale_level0 / sx, ty * scale_level0 / sy
    x1, y1 = x0 + foot / sx, y0 + foot / sy
    table = summed_area_table(mask.astype(np.float64))
    area = (x1 - x0) * (y1 - y0)
    frac = np.clip(box_sum(table, x0, y0, x1, y1) / area, 0.0, 1.0)
    keep = frac >= min_tissue_frac
    target_xy = np.stack([tx[keep], ty[keep]], axis=1).astype(np.int64)
    xy_level0 = np.round(target_xy * scale_level0).astype(np.int64)
    return Grid(target_xy, xy_level0, frac[keep].astype(np.float32), int(tx.size))
