"""Pixel masks for evaluation, rasterised from a slide's QuPath annotations into its store.

Tiling with annotations already stores the masks; this adds (or replaces) them for a store
tiled without, from the same rule (:func:`wsi_pixelcam.geo.raster.patch_masks`) at the same
size (:func:`wsi_pixelcam.store.patch_store.mask_px_for`), so both ways give the same masks.
Patch ``(x, y)`` level-0 top-left corners and the slide's bounds offset (QuPath's frame) come
from the store; the result is a ``masks`` (N, M, M) uint8 array (see :mod:`.store_arrays`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import shapely

from wsi_pixelcam.data.store_arrays import add_array
from wsi_pixelcam.errors import AnnotationError, DataError
from wsi_pixelcam.geo.geojson import read_qupath_annotations
from wsi_pixelcam.geo.raster import patch_masks
from wsi_pixelcam.labels import roi_union
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.store.patch_store import MASK_CHUNK_ROWS, mask_px_for


def add_masks_from_annotations(store_path: str | Path, annotations: str | Path) -> int:
    """Rasterise ``annotations`` over every patch of the store into its ``masks`` array.

    Returns the number of patches with any foreground pixel. Raises AnnotationError when no
    annotation touches the store's patches (another slide's file, or another frame).
    """
    store = open_patch_store(store_path)
    meta = store.meta
    if meta.from_images:
        raise DataError(
            f"{store.path}: its patches were written from separate images, not cut from a "
            "slide; annotations cannot be placed on them"
        )
    patch_level0 = meta.tiling.patch_level0
    mask_px = mask_px_for(meta.tiling.patch_px)
    offset = meta.slide.bounds_offset
    background = (meta.labels.rule or {}).get("background_class")
    classified = [a for a in read_qupath_annotations(annotations) if a.class_name]
    if not classified:
        raise AnnotationError(f"{annotations}: no classified area annotation")
    corners = store.coords.astype(np.float64) - np.asarray(offset, dtype=np.float64)
    boxes = shapely.box(
        corners[:, 0], corners[:, 1], corners[:, 0] + patch_level0, corners[:, 1] + patch_level0
    )
    # any class counts here: a slide annotated as background only has all-zero masks
    anywhere = shapely.union_all([a.geometry for a in classified])
    if len(boxes) and not shapely.intersects(anywhere, boxes).any():
        raise AnnotationError(
            f"{annotations}: no annotation overlaps the patches of {store.path}; is it "
            "another slide's file, or in another frame?"
        )

    geometry = roi_union(classified, background)
    with_roi = 0

    def counted() -> Iterator[tuple[int, np.ndarray]]:
        nonlocal with_roi
        for start, rows in patch_masks(geometry, corners, patch_level0, mask_px, MASK_CHUNK_ROWS):
            with_roi += int(rows.reshape(len(rows), -1).any(axis=1).sum())
            yield start, rows

    add_array(
        store.path,
        "masks",
        shape=(len(corners), mask_px, mask_px),
        dtype="uint8",
        chunk_rows=MASK_CHUNK_ROWS,
        record={"source": "annotations", "path": str(annotations), "mask_px": mask_px},
        blocks=counted(),
    )
    return with_roi
