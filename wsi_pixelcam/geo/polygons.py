"""Binary masks and probability maps to valid polygons in level-0 pixel coordinates.

Boundaries follow pixel edges exactly (each foreground pixel is a closed unit square), so a
box of pixels gives exactly the box's area. Marching squares (``skimage.measure.find_contours``)
interpolates through pixel centres and cuts every corner, losing area on small regions and
never matching the mask it came from; pixel-edge tracing keeps the polygon and the mask in
exact agreement, and because every vertex lies on the integer pixel grid, pieces traced in
neighbouring chunks share their seam edges exactly and merge without gaps.

Foreground is 4-connected: pixels touching only at a corner become separate polygons (or
parts touching at one point), as in a union of pixel squares.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import shapely
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon
from skimage.measure import label

from wsi_pixelcam.geo.qupath_rules import PRECISION_PX

logger = logging.getLogger(__name__)

# Edge directions in the y-down pixel frame: east, south, west, north.
_DX = np.array([1, 0, -1, 0])
_DY = np.array([0, 1, 0, -1])
# Offset from an edge's start vertex to the foreground pixel on its right-hand side.
_PIX_DX = np.array([0, -1, -1, 0])
_PIX_DY = np.array([0, 0, -1, -1])
_TRACE_THREADS = 4


class ArrayLike2D(Protocol):
    """Anything 2-D that slices like numpy: a zarr array, a dask array, a memmap."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any) -> Any: ...


def polygons_from_mask(
    mask: np.ndarray,
    *,
    level0_per_px: float,
    mpp_level0: float,
    frame_offset_level0: tuple[float, float] = (0.0, 0.0),
    min_area_um2: float = 0.0,
    min_hole_um2: float = 0.0,
    simplify_um: float = 0.0,
) -> list[Polygon]:
    """Polygons (with holes) of the True pixels of ``mask``, in level-0 pixels of the output frame.

    A mask pixel (row i, column j) covers level-0 ``[j, j+1) * level0_per_px`` horizontally;
    the output coordinate is ``px * level0_per_px - frame_offset_level0``, where the frame
    offset is the slide's bounds offset when writing for QuPath's cropped frame (else 0).
    Regions under ``min_area_um2`` and holes under ``min_hole_um2`` are dropped (holes filled),
    then boundaries are simplified by ``simplify_um`` preserving topology. Every polygon is
    valid after snapping to QuPath's 0.01 px grid. Largest first.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    pieces = _trace_polygons(mask.astype(bool, copy=False), (0, 0))
    return _to_level0(
        pieces,
        level0_per_px=level0_per_px,
        mpp_level0=mpp_level0,
        frame_offset_level0=frame_offset_level0,
        min_area_um2=min_area_um2,
        min_hole_um2=min_hole_um2,
        simplify_um=simplify_um,
    )


def polygons_from_chunked_map(
    array: ArrayLike2D,
    threshold: float,
    *,
    chunk_px: int,
    level0_per_px: float,
    mpp_level0: float,
    frame_offset_level0: tuple[float, float] = (0.0, 0.0),
    min_area_um2: float = 0.0,
    min_hole_um2: float = 0.0,
    simplify_um: float = 0.0,
) -> list[Polygon]:
    """Polygons of ``array >= threshold``, reading ``chunk_px`` squares one at a time.

    Memory holds one chunk plus the polygons. Pieces that reach an inner chunk seam are merged
    with a shapely union at the end; pieces wholly inside a chunk are final at once. Because
    traced edges lie on the pixel grid, the merged result equals the non-chunked one. NaN
    (no tissue, no patch) counts as below the threshold. Other arguments as
    :func:`polygons_from_mask`.
    """
    if len(array.shape) != 2:
        raise ValueError(f"array must be 2-D (H, W), got shape {tuple(array.shape)}")
    if chunk_px < 1:
        raise ValueError(f"chunk_px must be positive, got {chunk_px}")
    height, width = (int(n) for n in array.shape)
    final: list[Polygon] = []
    open_pieces: list[Polygon] = []

    def trace(y0: int, x0: int) -> list[tuple[Polygon, bool]]:
        y1, x1 = min(y0 + chunk_px, height), min(x0 + chunk_px, width)
        block = np.asarray(array[y0:y1, x0:x1], dtype=np.float64)
        return [
            (piece, _reaches_seam(piece.bounds, (x0, y0, x1, y1), (width, height)))
            for piece in _trace_polygons(block >= threshold, (x0, y0))
        ]

    origins = [(y0, x0) for y0 in range(0, height, chunk_px) for x0 in range(0, width, chunk_px)]
    # chunks are independent and numpy, scikit-image and zarr release the GIL while they work
    with ThreadPoolExecutor(_TRACE_THREADS, thread_name_prefix="wsi-trace") as pool:
        for traced in pool.map(lambda yx: trace(*yx), origins):
            for piece, at_seam in traced:
                (open_pieces if at_seam else final).append(piece)
    if open_pieces:
        final.extend(polygon_parts(shapely.unary_union(open_pieces)))
    return _to_level0(
        final,
        level0_per_px=level0_per_px,
        mpp_level0=mpp_level0,
        frame_offset_level0=frame_offset_level0,
        min_area_um2=min_area_um2,
        min_hole_um2=min_hole_um2,
        simplify_um=simplify_um,
    )


def _reaches_seam(
    bounds: tuple[float, float, float, float],
    chunk: tuple[int, int, int, int],
    size_wh: tuple[int, int],
) -> bool:
    """Whether a piece traced in ``chunk`` (x0, y0, x1, y1) touches an inner chunk seam."""
    minx, miny, maxx, maxy = bounds
    x0, y0, x1, y1 = chunk
    return (
        (minx == x0 and x0 > 0)
        or (miny == y0 and y0 > 0)
        or (maxx == x1 and x1 < size_wh[0])
        or (maxy == y1 and y1 < size_wh[1])
    )


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit pixel edges between foreground and background, directed foreground-on-the-right.

    Returns start x, start y and direction (0 E, 1 S, 2 W, 3 N) of each edge, in vertex
    coordinates (vertex (x, y) is the top-left corner of pixel (row y, column x)).
    """
    padded = np.pad(mask.view(np.uint8), 1).view(np.int8)
    # +1 where the pixel below (right of) an edge is foreground, -1 above (left of) it: one
    # scan per axis finds both directions, each in row-major order
    east_y, east_x, west_y, west_x = _signed_edges(np.diff(padded[:, 1:-1], axis=0))
    north_y, north_x, south_y, south_x = _signed_edges(np.diff(padded[1:-1, :], axis=1))
    xs = np.concatenate([east_x, south_x, west_x + 1, north_x])
    ys = np.concatenate([east_y, south_y, west_y, north_y + 1])
    counts = [len(east_x), len(south_x), len(west_x), len(north_x)]
    dirs = np.repeat(np.arange(4, dtype=np.int64), counts)
    return xs.astype(np.int64), ys.astype(np.int64), dirs


def _signed_edges(step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(y, x) of the +1 steps, then of the -1 steps, of a difference image."""
    where = np.flatnonzero(step)
    rising = step.ravel()[where] > 0
    up_y, up_x = np.divmod(where[rising], step.shape[1])
    down_y, down_x = np.divmod(where[~rising], step.shape[1])
    return up_y, up_x, down_y, down_x


def _successors(xs: np.ndarray, ys: np.ndarray, dirs: np.ndarray, width: int) -> np.ndarray:
    """Index of the edge that follows each edge around its ring.

    At an ordinary vertex there is one outgoing edge. Where two foreground pixels meet only
    at a corner there are two; taking the right turn keeps each pixel's boundary separate,
    which makes foreground 4-connected.
    """
    stride = width + 1  # vertex x spans 0..width, so keys never collide across rows
    keys = (ys * stride + xs) * 4 + dirs
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    end_x, end_y = xs + _DX[dirs], ys + _DY[dirs]
    succ = np.full(len(xs), -1, dtype=np.int64)
    for turn in (1, 0, 3):  # right, straight, left; a U-turn never occurs
        wanted = (end_y * stride + end_x) * 4 + (dirs + turn) % 4
        pos = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
        hit = (succ < 0) & (sorted_keys[pos] == wanted)
        succ[hit] = order[pos[hit]]
    return succ


def _trace_polygons(mask: np.ndarray, origin_xy: tuple[int, int]) -> list[Polygon]:
    """Exact pixel-edge polygons of a boolean mask, shifted by ``origin_xy`` pixels."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    # trace only the rows and columns holding foreground: the same rings, in the same order
    mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    origin_xy = (origin_xy[0] + int(cols[0]), origin_xy[1] + int(rows[0]))
    xs, ys, dirs = _boundary_edges(mask)
    succ = _successors(xs, ys, dirs, mask.shape[1]).tolist()
    components = label(mask, connectivity=1)
    comp_of_edge = components[ys + _PIX_DY[dirs], xs + _PIX_DX[dirs]]
    shells: dict[int, np.ndarray] = {}
    holes: dict[int, list[np.ndarray]] = {}
    seen = np.zeros(len(succ), dtype=bool)
    for start in range(len(succ)):
        if seen[start]:
            continue
        ring = []
        edge = start
        while not seen[edge]:
            seen[edge] = True
            ring.append(edge)
            edge = succ[edge]
        idx = np.asarray(ring)
        turns = dirs[idx] != dirs[np.roll(idx, 1)]  # keep corners, drop collinear vertices
        coords = np.column_stack([xs[idx][turns] + origin_xy[0], ys[idx][turns] + origin_xy[1]])
        x, y = coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64)
        signed_area = 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
        comp = int(comp_of_edge[start])
        if signed_area > 0:  # clockwise on screen: an outer boundary
            shells[comp] = coords
        else:
            holes.setdefault(comp, []).append(coords)
    polygons: list[Polygon] = []
    for comp, shell in shells.items():
        polygon = Polygon(shell, holes.get(comp, []))
        if polygon.is_valid:
            polygons.append(polygon)
        else:  # a ring touching itself at a corner: split it at that point
            polygons.extend(polygon_parts(shapely.make_valid(polygon)))
    return polygons


def polygon_parts(geometry: shapely.Geometry) -> list[Polygon]:
    """The non-empty polygons inside any geometry; lines and points are dropped."""
    out: list[Polygon] = []
    for part in shapely.get_parts(geometry):
        if isinstance(part, Polygon) and not part.is_empty:
            out.append(part)
        elif isinstance(part, (MultiPolygon, GeometryCollection)):
            out.extend(polygon_parts(part))
    return out


def _to_level0(
    pieces: Sequence[Polygon],
    *,
    level0_per_px: float,
    mpp_level0: float,
    frame_offset_level0: tuple[float, float],
    min_area_um2: float,
    min_hole_um2: float,
    simplify_um: float,
) -> list[Polygon]:
    """Filter by physical size, scale into the output frame, simplify and snap for QuPath."""
    if level0_per_px <= 0 or mpp_level0 <= 0:
        raise ValueError(
            f"level0_per_px ({level0_per_px}) and mpp_level0 ({mpp_level0}) must be positive"
        )
    um2_per_px = (level0_per_px * mpp_level0) ** 2
    offset = np.asarray(frame_offset_level0, dtype=np.float64)
    out: list[Polygon] = []
    for piece in pieces:
        kept_holes = [h for h in piece.interiors if Polygon(h).area * um2_per_px >= min_hole_um2]
        if len(kept_holes) != len(piece.interiors):
            piece = Polygon(piece.exterior, kept_holes)
        if piece.area * um2_per_px < min_area_um2 or piece.area == 0:
            continue
        geom = shapely.transform(piece, lambda c: c * level0_per_px - offset)
        if simplify_um > 0:
            geom = shapely.simplify(geom, simplify_um / mpp_level0, preserve_topology=True)
        geom = shapely.set_precision(shapely.make_valid(geom), PRECISION_PX)
        out.extend(p for p in polygon_parts(geom) if p.area > 0)
    out.sort(key=lambda p: -p.area)
    logger.debug("%d polygons from %d traced pieces", len(out), len(pieces))
    return out
