"""Which patches a slide has: decided once, for the tiler and for inference streamed from
the slide, so both cut exactly the same grid from exactly the same level.

The level-0 MPP and its checks, the level read, the tissue thumbnail and mask, and the grid.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_pixelcam.config import TileConfig
from wsi_pixelcam.errors import ConfigError, NoTissueError, SlideReadError
from wsi_pixelcam.geometry import LevelChoice, choose_level
from wsi_pixelcam.slide import Mpp, SlideReader, check_target_mpp, resolve_mpp
from wsi_pixelcam.tiling.grid import Grid, GridTooLargeError, build_grid
from wsi_pixelcam.tiling.tissue import Thumbnail, detect_tissue, read_thumbnail


@dataclass(frozen=True)
class SlidePlan:
    """The slide's resolution, the level patches are read from, its tissue and its grid."""

    mpp: Mpp
    choice: LevelChoice
    thumbnail: Thumbnail
    mask: np.ndarray  # tissue, on the thumbnail's pixels
    grid: Grid

    @property
    def thumb_px_level0(self) -> float:
        """Level-0 pixels per thumbnail pixel (the mean of x and y)."""
        return float(np.mean(self.thumbnail.level0_per_px))


def plan_slide(
    reader: SlideReader, slide_path: Path, cfg: TileConfig, mpp_override: float | None
) -> SlidePlan:
    """The plan for ``cfg``; MppError, NoTissueError or ConfigError naming the slide."""
    mpp = resolve_mpp(reader, mpp_override)
    check_target_mpp(slide_path, mpp, cfg.target_mpp)
    choice = choose_level(reader.level_downsamples, mpp.mean, cfg.target_mpp, cfg.mpp_tolerance)
    thumb = read_thumbnail(reader, mpp.mean, cfg.tissue.thumbnail_mpp)
    mask = detect_tissue(thumb.rgb, float(np.mean(thumb.level0_per_px)) * mpp.mean, cfg.tissue)
    if not mask.any():
        raise NoTissueError(
            f"{slide_path}: no tissue found (blank slide, or lower tissue.min_saturation)"
        )
    try:
        grid = build_grid(
            reader.dimensions,
            choice.scale_level0,
            cfg.patch_px,
            cfg.stride,
            mask,
            thumb.level0_per_px,
            cfg.min_tissue_frac,
        )
    except GridTooLargeError as exc:
        raise ConfigError(f"{slide_path}: {exc}") from None
    if len(grid) == 0:
        raise NoTissueError(
            f"{slide_path}: no {cfg.patch_px} px patch at {cfg.target_mpp} um/px has "
            f"{cfg.min_tissue_frac:.0%} tissue; lower min_tissue_frac or patch_px"
        )
    return SlidePlan(mpp, choice, thumb, mask, grid)


def check_unreadable(slide_path: Path, n_bad: int, n_total: int, max_frac: float) -> None:
    """SlideReadError when more than ``max_frac`` of the patches could not be decoded."""
    bad_frac = n_bad / n_total
    if bad_frac > max_frac:
        raise SlideReadError(
            f"{slide_path}: {n_bad} of {n_total} patches could not be decoded "
            f"({bad_frac:.1%} > max_bad_patch_frac {max_frac:.1%}); "
            "the file is corrupt or truncated"
        )


def quick_hash(path: Path) -> tuple[int, str]:
    """Identify a (possibly many-GB) slide without reading it all: (size, sha256 of size +
    first and last MiB)."""
    if path.is_dir():
        return 0, ""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(2**20))
        if size > 2**20:
            handle.seek(max(2**20, size - 2**20))
            digest.update(handle.read(2**20))
    return size, digest.hexdigest()
