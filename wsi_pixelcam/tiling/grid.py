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


MAX_PATCHES = 20_000_000
"""Kept patches one slide may have (about 0.7 GB of coordinates): 20x a 100k x 100k px slide at
0.5 um/px with half-overlapping 224 px patches. More means a stride or patch size typo."""
BAND_CANDIDATES = 1_000_000  # candidates scored at once: temporaries stay near 100 MB


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
    footprint falls on the mask grid. Rows of candidates are scored in bands, so memory
    follows the patches kept, not the slide's size; GridTooLargeError beyond MAX_PATCHES.
    """
    width_t = target_extent(dimensions_level0[0], scale_level0)
    height_t = target_extent(dimensions_level0[1], scale_level0)
    xs = grid_starts(width_t, patch_px, stride_px)
    ys = grid_starts(height_t, patch_px, stride_px)
    sx, sy = mask_level0_per_px
    foot = patch_px * scale_level0
    table = summed_area_table(mask.astype(np.float64))
    rows_per_band = max(1, BAND_CANDIDATES // max(1, xs.size))
    kept_xy: list[np.ndarray] = []
    kept_frac: list[np.ndarray] = []
    n_kept = 0
    for first in range(0, ys.size, rows_per_band):
        gx, gy = np.meshgrid(xs, ys[first : first + rows_per_band])  # row-major: y outer
        tx, ty = gx.ravel(), gy.ravel()
        x0, y0 = tx * scale_level0 / sx, ty * scale_level0 / sy
        x1, y1 = x0 + foot / sx, y0 + foot / sy
        frac = np.clip(box_sum(table, x0, y0, x1, y1) / ((x1 - x0) * (y1 - y0)), 0.0, 1.0)
        keep = frac >= min_tissue_frac
        n_kept += int(keep.sum())
        if n_kept > MAX_PATCHES:
            raise GridTooLargeError(
                f"more than {MAX_PATCHES:,} patches of {patch_px} px every {stride_px} px "
                f"({xs.size:,} x {ys.size:,} candidates); raise stride_px or patch_px"
            )
        kept_xy.append(np.stack([tx[keep], ty[keep]], axis=1).astype(np.int64))
        kept_frac.append(frac[keep].astype(np.float32))
    target_xy = np.concatenate(kept_xy) if kept_xy else np.zeros((0, 2), np.int64)
    tissue = np.concatenate(kept_frac) if kept_frac else np.zeros(0, np.float32)
    xy_level0 = np.round(target_xy * scale_level0).astype(np.int64)
    return Grid(target_xy, xy_level0, tissue, int(xs.size * ys.size))


class GridTooLargeError(ValueError):
    """The requested grid would not fit in memory (the tiler names the slide)."""
