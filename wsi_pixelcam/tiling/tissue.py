"""Tissue detection on a low-resolution thumbnail, with every size in physical units.

Method: Otsu threshold on HSV saturation (stain is saturated, glass and background are
not), floored at ``min_saturation`` so an all-tissue or all-glass thumbnail is not split in
two arbitrarily; then a closing, and removal of small objects and holes, with radii and areas
in micrometres so the mask does not change with scanner resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk, remove_small_holes, remove_small_objects

from wsi_pixelcam.config import TissueConfig
from wsi_pixelcam.slide.base import SlideReader

_STRIP_BYTES = 64 * 2**20  # bound on one decoded strip while building a thumbnail


@dataclass(frozen=True)
class Thumbnail:
    """An RGB thumbnail and the level-0 size of one of its pixels along x and y."""

    rgb: np.ndarray
    level0_per_px: tuple[float, float]


def read_thumbnail(reader: SlideReader, mpp_level0: float, thumbnail_mpp: float) -> Thumbnail:
    """Read the slide at about ``thumbnail_mpp`` from the coarsest suitable level.

    Reads in horizontal strips and resamples each, so a slide without a pyramid (one huge
    level) never has to fit in memory at full resolution.
    """
    width0, height0 = reader.dimensions
    downsample = max(1.0, thumbnail_mpp / mpp_level0)
    out_w = max(1, math.ceil(width0 / downsample))
    out_h = max(1, math.ceil(height0 / downsample))
    sx, sy = width0 / out_w, height0 / out_h
    level = max(
        (i for i, ds in enumerate(reader.level_downsamples) if ds <= downsample * 1.001),
        key=lambda i: reader.level_downsamples[i],
        default=0,
    )
    ds = reader.level_downsamples[level]
    level_w, level_h = reader.level_dimensions[level]
    rows_per_strip = max(1, int(_STRIP_BYTES // (3 * level_w * max(sy / ds, 1.0))))
    strips = []
    for row0 in range(0, out_h, rows_per_strip):
        row1 = min(out_h, row0 + rows_per_strip)
        fy0, fy1 = row0 * sy / ds, row1 * sy / ds
        ly0, ly1 = math.floor(fy0), min(level_h, math.ceil(fy1))
        region = reader.read_region((0, round(ly0 * ds)), level, (level_w, max(1, ly1 - ly0)))
        # a level's size is rounded (e.g. 1898 px / 4 -> 475), so width0 / ds may overshoot it
        box = (
            0.0,
            fy0 - ly0,
            min(width0 / ds, float(region.shape[1])),
            min(fy1 - ly0, float(region.shape[0])),
        )
        strip = Image.fromarray(region).resize((out_w, row1 - row0), Image.Resampling.BOX, box=box)
        strips.append(np.asarray(strip))
    return Thumbnail(np.concatenate(strips, axis=0), (sx, sy))


def detect_tissue(rgb: np.ndarray, px_um: float, cfg: TissueConfig) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail whose pixels are ``px_um`` micrometres wide."""
    saturation = rgb2hsv(rgb)[..., 1]
    try:
        threshold = float(threshold_otsu(saturation))
    except ValueError:  # a constant image has no threshold
        threshold = cfg.min_saturation
    mask = saturation > max(threshold, cfg.min_saturation)
    radius_px = cfg.closing_um / px_um
    if radius_px >= 0.5:
        mask = closing(mask, disk(max(1, round(radius_px))))
    px_area = px_um * px_um
    mask = remove_small_objects(mask, max_size=int(cfg.min_object_um2 / px_area))
    mask = remove_small_holes(mask, max_size=int(cfg.min_hole_um2 / px_area))
    return np.asarray(mask, dtype=bool)


def overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """QC picture: tissue tinted green, the rest dimmed."""
    out = rgb.astype(np.float32)
    tint = np.array([0, 200, 0], np.float32)
    out[mask] = 0.6 * out[mask] + 0.4 * tint
    out[~mask] *= 0.5
    return out.astype(np.uint8)
