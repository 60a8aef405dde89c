"""ROIs from a stitched heatmap: threshold -> polygons -> per-ROI measurements, chunk by chunk.

Polygon tracing is :func:`~wsi_pixelcam.geo.polygons.polygons_from_chunked_map`. Measurements
(mean and max foreground probability) are taken over the heatmap pixels whose centres fall
inside each final polygon, reading one heatmap chunk at a time and rasterising only the ROIs
that reach it, so memory never depends on the slide's size. The pixels are those of
:func:`wsi_pixelcam.geo.raster.rasterise`, the one pixel-centre rule every mask uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from wsi_pixelcam.geo.polygons import ArrayLike2D, polygons_from_chunked_map
from wsi_pixelcam.geo.raster import rasterise
from wsi_pixelcam.store.heatmap_store import Heatmap

_STATS_THREADS = 4  # chunks measured at once: numpy, shapely and zarr release the GIL


@dataclass(frozen=True)
class Roi:
    """One ROI polygon in the output frame (level-0 pixels minus the frame offset)."""

    polygon: Polygon
    area_um2: float
    mean_prob: float
    max_prob: float


def extract_rois(
    heatmap: Heatmap,
    threshold: float,
    *,
    channel: int = 0,
    frame_offset_level0: tuple[float, float] = (0.0, 0.0),
    min_area_um2: float = 0.0,
    min_hole_um2: float = 0.0,
    simplify_um: float = 0.0,
) -> list[Roi]:
    """ROIs where ``channel`` of the finest level is ``>= threshold``, largest first.

    ``frame_offset_level0`` is subtracted from level-0 coordinates (QuPath's cropped frame);
    pass ``(0, 0)`` for the full level-0 frame.
    """
    plane = heatmap.plane(0, channel)
    chunk_px = int(heatmap.levels[0].chunks[1])
    mpp_level0 = heatmap.mpp / heatmap.level0_per_px
    polygons = polygons_from_chunked_map(
        plane,
        threshold,
        chunk_px=chunk_px,
        level0_per_px=heatmap.level0_per_px,
        mpp_level0=mpp_level0,
        frame_offset_level0=frame_offset_level0,
        min_area_um2=min_area_um2,
        min_hole_um2=min_hole_um2,
        simplify_um=simplify_um,
    )
    offset = np.asarray(frame_offset_level0, dtype=np.float64)
    in_px = [shapely.transform(p, lambda c: (c + offset) / heatmap.level0_per_px) for p in polygons]
    stats = region_stats(plane, in_px, chunk_px)
    return [
        Roi(polygon, float(polygon.area) * mpp_level0**2, mean, peak)
        for polygon, (mean, peak) in zip(polygons, stats, strict=True)
    ]


def region_stats(
    plane: ArrayLike2D, regions_px: Sequence[BaseGeometry], chunk_px: int
) -> list[tuple[float, float]]:
    """(mean, max) of the finite ``plane`` values at pixel centres inside each region.

    Regions are in ``plane`` pixel coordinates. A region too thin to contain a pixel centre
    takes the value at its representative point (0 where that is NaN).
    """
    n = len(regions_px)
    sums, counts = np.zeros(n), np.zeros(n, dtype=np.int64)
    peaks = np.full(n, -np.inf)
    if n == 0:
        return []
    height, width = (int(s) for s in plane.shape)
    tree = shapely.STRtree(regions_px)

    def chunk_stats(y0: int, x0: int) -> list[tuple[int, float, int, float]]:
        y1, x1 = min(y0 + chunk_px, height), min(x0 + chunk_px, width)
        hits = tree.query(shapely.box(x0, y0, x1, y1), predicate="intersects")
        if len(hits) == 0:
            return []
        block = np.asarray(plane[y0:y1, x0:x1], dtype=np.float64)
        found = []
        for i in hits:
            values = block[rasterise(regions_px[i], (x0, y0), block.shape)]
            values = values[np.isfinite(values)]
            if values.size:
                found.append((int(i), float(values.sum()), int(values.size), float(values.max())))
        return found

    chunks = _chunks_touched(regions_px, chunk_px, (height, width))
    with ThreadPoolExecutor(_STATS_THREADS, thread_name_prefix="wsi-roi-stats") as pool:
        for found in pool.map(lambda yx: chunk_stats(*yx), chunks):
            for i, total, count, peak in found:
                sums[i] += total
                counts[i] += count
                peaks[i] = max(peaks[i], peak)
    out = []
    for i, region in enumerate(regions_px):
        if counts[i]:
            out.append((float(sums[i] / counts[i]), float(peaks[i])))
            continue
        point = region.representative_point()
        row = min(max(int(point.y), 0), height - 1)
        col = min(max(int(point.x), 0), width - 1)
        value = float(np.nan_to_num(np.asarray(plane[row : row + 1, col : col + 1])[0, 0]))
        out.append((value, value))
    return out


def _chunks_touched(
    regions: Sequence[BaseGeometry], chunk_px: int, shape_hw: tuple[int, int]
) -> list[tuple[int, int]]:
    """Top-left (y, x) of every chunk a region's bounding box reaches, in row order."""
    touched: set[tuple[int, int]] = set()
    for region in regions:
        minx, miny, maxx, maxy = region.bounds
        cy0, cx0 = max(int(miny) // chunk_px, 0), max(int(minx) // chunk_px, 0)
        cy1 = min(math.ceil(maxy) // chunk_px, (shape_hw[0] - 1) // chunk_px)
        cx1 = min(math.ceil(maxx) // chunk_px, (shape_hw[1] - 1) // chunk_px)
        touched.update(
            (cy * chunk_px, cx * chunk_px)
            for cy in range(cy0, cy1 + 1)
            for cx in range(cx0, cx1 + 1)
        )
    return sorted(touched)
