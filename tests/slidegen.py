"""Writes the real slide files the tests open: tiled JPEG TIFF pyramids with known tissue.

The "tissue" is stained-looking texture (saturated pink/purple with noise) inside known
level-0 boxes on near-white glass, so the tissue mask, patch grid and counts are known exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

Box = tuple[int, int, int, int]  # level-0 x0, y0, x1, y1
GLASS = (242, 240, 244)
STAIN = (196, 110, 168)


def tissue_image(width: int, height: int, boxes: Sequence[Box], seed: int = 0) -> np.ndarray:
    """Near-white glass with stained, textured tissue inside ``boxes``."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = GLASS
    for x0, y0, x1, y1 in boxes:
        h, w = y1 - y0, x1 - x0
        noise = rng.normal(0, 18, (h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
        image[y0:y1, x0:x1] = np.clip(np.array(STAIN) + noise, 0, 255).astype(np.uint8)
    return image


def _levels(image: np.ndarray, downsamples: Sequence[int]) -> list[np.ndarray]:
    out = []
    for ds in downsamples:
        h, w = image.shape[0] // ds, image.shape[1] // ds
        crop = image[: h * ds, : w * ds].reshape(h, ds, w, ds, 3).mean(axis=(1, 3))
        out.append(crop.astype(np.uint8))
    return out


def write_svs(
    path: Path,
    image: np.ndarray,
    mpp: float,
    downsamples: Sequence[int] = (1, 4),
    app_mag: int = 20,
    tile: int = 256,
) -> Path:
    """An Aperio-style SVS: tiled JPEG levels as pages, MPP in the ImageDescription."""
    h, w = image.shape[:2]
    description = (
        f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90"
        f"|AppMag = {app_mag}|MPP = {mpp}"
    )
    levels = _levels(image, downsamples)
    thumb_ds = max(1, max(h, w) // 256)
    thumbnail = image[::thumb_ds, ::thumb_ds]
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            tw.write(
                level,
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                description=description,
                metadata=None,
            )
            if i == 0:  # Aperio puts a stripped thumbnail second; readers rely on it
                tw.write(
                    thumbnail,
                    compression="jpeg",
                    photometric="rgb",
                    description=description,
                    metadata=None,
                )
    return path


def write_generic_tiff(
    path: Path,
    image: np.ndarray,
    mpp: float | None,
    downsamples: Sequence[int] = (1, 4),
    tile: int = 256,
) -> Path:
    """A generic tiled TIFF pyramid (levels as pages), MPP only in the resolution tags."""
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(_levels(image, downsamples)):
            kwargs: dict = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * downsamples[i])
                kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tw.write(
                level,
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
                **kwargs,
            )
    return path


def write_ome_tiff(
    path: Path, image: np.ndarray, mpp: float, downsamples: Sequence[int] = (1, 4), tile: int = 256
) -> Path:
    """An OME-TIFF with the pyramid in SubIFDs and MPP in the OME-XML only."""
    levels = _levels(image, downsamples)
    meta = {
        "axes": "YXS",
        "PhysicalSizeX": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp,
        "PhysicalSizeYUnit": "µm",
    }
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(
            levels[0],
            tile=(tile, tile),
            compression="jpeg",
            photometric="rgb",
            subifds=len(levels) - 1,
            metadata=meta,
        )
        for level in levels[1:]:
            tw.write(
                level,
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                subfiletype=1,
                metadata=None,
            )
    return path


def write_flat_tiff(path: Path, image: np.ndarray, mpp: float, tile: int = 256) -> Path:
    """A single-level (non-pyramidal) tiled TIFF."""
    return write_generic_tiff(path, image, mpp, downsamples=(1,), tile=tile)
