"""Pixel masks for evaluation, rasterised from a slide's QuPath annotations into its store.

A patch's mask marks the pixels inside any classified area annotation (the label rule's
background class excluded), at the store's patch resolution. Patch ``(x, y)`` level-0
top-left corners and the slide's bounds offset (QuPath's frame) come from the store; the
result is added as a ``masks`` (N, P, P) uint8 array (see :mod:`.store_arrays`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import shapely
from skimage.draw import polygon as fill_polygon

from wsi_pixelcam.data.store_arrays import add_array
from wsi_pixelcam.errors import AnnotationError, DataError
from wsi_pixelcam.geo.geojson import read_qupath_annotations
from wsi_pixelcam.geo.polygons import polygon_parts
from wsi_pixelcam.store import open_patch_store

_BLOCK = 64


def rasterise(
    geometry: shapely.Geometry, box_xy: tuple[float, float], box_size: float, px: int
) -> np.ndarray:
    """(px, px) uint8 mask of ``geometry`` over the square at ``box_xy`` of side ``box_size``.

    A pixel is inside when its centre is.
    """
    x0, y0 = box_xy
    mask = np.zeros((px, px), np.uint8)
    clipped = shapely.clip_by_rect(geometry, x0, y0, x0 + box_size, y0 + box_size)
    scale = px / box_size
    for part in polygon_parts(clipped):
        for ring, value in [(part.exterior, 1), *((hole, 0) for hole in part.interiors)]:
            xy = np.asarray(ring.coords)
            # pixel (r, c) has its centre at ((c + 0.5), (r + 0.5)) / scale from the corner
            rows, cols = fill_polygon(
                (xy[:, 1] - y0) * scale - 0.5, (xy[:, 0] - x0) * scale - 0.5, (px, px)
            )
            mask[rows, cols] = value
    return mask


def add_masks_from_annotations(store_path: str | Path, annotations: str | Path) -> int:
    """Rasterise ``annotations`` over every patch of the store into its ``masks`` array.

    Returns the number of patches with any foreground pixel. Raises AnnotationError when no
    annotation touches the store's patches (another slide's file, or another frame).
    """
    store = open_patch_store(store_path)
    attrs = store.attrs
    tiling = attrs.get("tiling", {})
    if "patch_level0" not in tiling:
        raise DataError(
            f"{store.path}: no tiling.patch_level0 in its attrs (not tiled from a slide); "
            "annotations cannot be placed on its patches"
        )
    patch_level0 = float(tiling["patch_level0"])
    patch_px = int(tiling["patch_px"])
    offset = attrs.get("slide", {}).get("bounds_offset", [0, 0])
    background = attrs.get("labels", {}).get("rule", {}).get("background_class")
    rois = [
        a.geometry
        for a in read_qupath_annotations(annotations)
        if a.class_name and a.class_name != background
    ]
    if not rois:
        raise AnnotationError(f"{annotations}: no classified (non-background) area annotation")
    geometry = shapely.union_all(rois)
    shapely.prepare(geometry)
    corners = store.coords.astype(np.float64) - np.asarray(offset, dtype=np.float64)
    boxes = shapely.box(
        corners[:, 0], corners[:, 1], corners[:, 0] + patch_level0, corners[:, 1] + patch_level0
    )
    touched = shapely.intersects(geometry, boxes)
    if len(boxes) and not touched.any():
        raise AnnotationError(
            f"{annotations}: no annotation overlaps the patches of {store.path}; is it "
            "another slide's file, or in another frame?"
        )

    with_roi = 0

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        nonlocal with_roi
        for start in range(0, len(corners), _BLOCK):
            rows = np.zeros((min(_BLOCK, len(corners) - start), patch_px, patch_px), np.uint8)
            for offset_row, index in enumerate(range(start, start + len(rows))):
                if touched[index]:
                    xy = (float(corners[index, 0]), float(corners[index, 1]))
                    rows[offset_row] = rasterise(geometry, xy, patch_level0, patch_px)
            with_roi += int(rows.reshape(len(rows), -1).any(axis=1).sum())
            yield start, rows

    add_array(
        store.path,
        "masks",
        shape=(len(corners), patch_px, patch_px),
        dtype="uint8",
        chunk_rows=_BLOCK,
        record={"source": "annotations", "path": str(annotations)},
        blocks=blocks(),
    )
    return with_roi
