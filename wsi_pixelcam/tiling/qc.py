"""Quality-control files for a tiled slide: thumbnail, mask, overlay and tissue outline.

Written to ``<slide_id>.qc/`` beside the store, so they can be opened without zarr: the PNGs in
any viewer, the GeoJSON in QuPath. They are built under a temporary name and moved into place
only once their store is complete, so a killed run never leaves QC files that look finished
beside a store that is not.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_pixelcam.atomic_write import TMP_MARK, replace_dir
from wsi_pixelcam.geo.geojson import annotation_feature, write_geojson
from wsi_pixelcam.geo.polygons import polygons_from_mask
from wsi_pixelcam.tiling.tissue import overlay

TISSUE_CLASS = "Tissue"
TISSUE_COLOR = (0, 160, 0)


@dataclass(frozen=True)
class StagedQC:
    """QC files written under ``tmp``, waiting for their store to be complete."""

    tmp: Path
    final: Path
    files: dict[str, str]  # names relative to the QC folder

    def publish(self) -> None:
        """Move the files into ``final`` (call once the store is complete)."""
        replace_dir(self.tmp, self.final)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def stage_qc(
    qc_dir: Path,
    thumbnail: np.ndarray,
    mask: np.ndarray,
    *,
    level0_per_px: float,
    mpp_level0: float,
    frame_offset: tuple[int, int],
    min_hole_um2: float,
    metadata: dict[str, str],
) -> StagedQC:
    """Write the QC files under a temporary name beside ``qc_dir``; publish them later."""
    tmp = qc_dir.with_name(f"{qc_dir.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        _save_png(thumbnail, tmp / "thumbnail.png")
        _save_png((mask * 255).astype(np.uint8), tmp / "tissue_mask.png")
        _save_png(overlay(thumbnail, mask), tmp / "tissue_overlay.png")
        polygons = polygons_from_mask(
            mask,
            level0_per_px=level0_per_px,
            mpp_level0=mpp_level0,
            frame_offset_level0=(float(frame_offset[0]), float(frame_offset[1])),
            min_hole_um2=min_hole_um2,
        )
        features = [
            annotation_feature(
                poly,
                class_name=TISSUE_CLASS,
                color=TISSUE_COLOR,
                name=f"Tissue {i + 1}",
                measurements={"area_um2": float(poly.area) * mpp_level0**2},
                metadata=metadata,
            )
            for i, poly in enumerate(polygons)
        ]
        write_geojson(tmp / "tissue.geojson", features)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = {
        "thumbnail": "thumbnail.png",
        "tissue_mask": "tissue_mask.png",
        "overlay": "tissue_overlay.png",
        "tissue_geojson": "tissue.geojson",
    }
    return StagedQC(tmp, qc_dir, files)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    """zlib level 1: a third of the default's time on noisy tissue thumbnails (a fixed cost
    of every tiled slide) for files about a tenth larger; the pixels are the same."""
    Image.fromarray(pixels).save(path, compress_level=1)
