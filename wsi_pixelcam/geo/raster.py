"""ROI masks of square patches: a mask pixel is inside when its centre is inside the geometry.

One rule for every patch mask a store holds, whether tiling wrote it or a later stage added it,
so the masks of a store never depend on which command made them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import shapely
from skimage.draw import polygon as fill_polygon

from wsi_pixelcam.geo.polygons import polygon_parts


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


def patch_masks(
    geometry: shapely.Geometry,
    corners: np.ndarray,
    patch_size: float,
    mask_px: int,
    block_rows: int,
) -> Iterator[tuple[int, np.ndarray]]:
    """Masks of the patches at ``corners`` (N, 2) in blocks of (first row, (n, px, px) uint8).

    ``corners`` and ``patch_size`` are in ``geometry``'s frame. Blocks keep memory bounded
    for a slide of any size; only patches the geometry touches are rasterised.
    """
    shapely.prepare(geometry)
    for start in range(0, len(corners), block_rows):
        xy = np.asarray(corners[start : start + block_rows], dtype=np.float64)
        boxes = shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + patch_size, xy[:, 1] + patch_size)
        rows = np.zeros((len(xy), mask_px, mask_px), np.uint8)
        for row in np.flatnonzero(shapely.intersects(geometry, boxes)):
            rows[row] = rasterise(
                geometry, (float(xy[row, 0]), float(xy[row, 1])), patch_size, mask_px
            )
        yield start, rows
