"""Masks from geometry: a pixel is inside when its centre is inside the geometry.

One rule for every mask: the patch masks a store holds (whether tiling wrote them or a later
stage added them), the ground truth a slide is scored against, and the heatmap pixels an ROI's
measurements are taken over.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import shapely

from wsi_pixelcam.geo.polygons import polygon_parts


def rasterise(
    geometry: shapely.Geometry,
    origin_xy: tuple[float, float],
    shape_hw: tuple[int, ...],
    scale: float = 1.0,
) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centres lie inside ``geometry``.

    Pixel (row r, column c) has its centre at ``origin + (c + 0.5, r + 0.5) / scale`` in the
    geometry's frame (``scale``: pixels per geometry unit). A centre exactly on an edge counts
    for the pixel to the right of and below the edge (half-open, so two polygons that share an
    edge never claim one pixel twice). A scanline even-odd fill over every ring, holes
    included: cost grows with the window's pixels plus the boundary's crossings, never with
    pixels times vertices.
    """
    height, width = int(shape_hw[0]), int(shape_hw[1])
    x0, y0 = origin_xy
    margin = 1.0 / scale
    clipped = shapely.clip_by_rect(
        geometry, x0 - margin, y0 - margin, x0 + (width + 1) * margin, y0 + (height + 1) * margin
    )
    rings = [
        (np.asarray(ring.coords) - (x0, y0)) * scale
        for part in polygon_parts(clipped)
        for ring in (part.exterior, *part.interiors)
    ]
    mask = np.zeros((height, width), dtype=bool)
    if not rings or height == 0 or width == 0:
        return mask
    a = np.concatenate([r[:-1] for r in rings])
    b = np.concatenate([r[1:] for r in rings])
    sloped = a[:, 1] != b[:, 1]
    a, b = a[sloped], b[sloped]
    ylo, yhi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    # rows whose centre y = r + 0.5 satisfies ylo <= y < yhi (each vertex counted once)
    first = np.clip(np.ceil(ylo - 0.5), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(yhi - 0.5), 0, height).astype(np.int64)
    spans = np.maximum(stop - first, 0)
    if spans.sum() == 0:
        return mask
    edge = np.repeat(np.arange(len(a)), spans)
    rows = first[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(spans) - spans, spans))
    t = (rows + 0.5 - a[edge, 1]) / (b[edge, 1] - a[edge, 1])
    x_cross = a[edge, 0] + t * (b[edge, 0] - a[edge, 0])
    # a crossing at x flips every pixel whose centre lies at or right of it
    cols = np.clip(np.ceil(x_cross - 0.5).astype(np.int64), 0, width)
    flips = np.bincount(rows * (width + 1) + cols, minlength=height * (width + 1))
    parity = np.cumsum(flips.reshape(height, width + 1)[:, :width], axis=1) & 1
    mask[:] = parity.astype(bool)
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
                geometry, (float(xy[row, 0]), float(xy[row, 1])), (mask_px, mask_px),
                scale=mask_px / patch_size,
            )  # fmt: skip
        yield start, rows
