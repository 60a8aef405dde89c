"""Grouped, threaded patch reads: one backend read per block of neighbouring patches.

Per-patch ``read_region`` calls decode each slide tile once per overlapping patch. Here the
grid is cut into bands of rows and runs of columns; each block's bounding box is read once
(decoding each tile once), resampled once if the level does not match the target, and split
into patches. Blocks are read by a small thread pool, with a bounded number in flight.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from wsi_pixelcam.errors import SlideReadError
from wsi_pixelcam.geometry import LevelChoice
from wsi_pixelcam.slide.base import SlideReader

log = logging.getLogger(__name__)

BLOCK_TARGET_PX = 2048  # a block spans at most about this many target pixels per side
READ_THREADS = 2
"""Threads per slide unless configured: tiling runs a slide per dask worker thread, and a CPU
streaming a slide needs its other cores for the model."""
REDUCE_FROM = 4.0
"""Resampling factors from here on (a slide without a pyramid level near the target) are first
box-averaged tile by tile, so memory follows the block, not the factor."""
REDUCE_TILE_PX = 4096  # level pixels per side read at once on that path


@dataclass(frozen=True)
class Block:
    """A rectangle of target pixels and the grid indices of the patches inside it."""

    x0: int
    y0: int
    x1: int
    y1: int
    indices: np.ndarray


def plan_blocks(target_xy: np.ndarray, patch_px: int, stride_px: int) -> list[Block]:
    """Group row-major patches into bands of rows, then runs of consecutive columns."""
    if target_xy.shape[0] == 0:
        return []
    per_side = max(1, (BLOCK_TARGET_PX - patch_px) // stride_px + 1)
    cols = target_xy[:, 0] // stride_px
    rows = target_xy[:, 1] // stride_px
    bands = rows // per_side
    blocks: list[Block] = []
    for band in np.unique(bands):
        in_band = np.flatnonzero(bands == band)
        band_cols = np.unique(cols[in_band])
        # split the band's columns where they stop being consecutive or the run gets too wide
        breaks = np.flatnonzero(np.diff(band_cols) != 1) + 1
        for run in np.split(band_cols, breaks):
            for start in range(0, run.size, per_side):
                chunk = run[start : start + per_side]
                sel = in_band[(cols[in_band] >= chunk[0]) & (cols[in_band] <= chunk[-1])]
                xy = target_xy[sel]
                blocks.append(
                    Block(
                        int(xy[:, 0].min()),
                        int(xy[:, 1].min()),
                        int(xy[:, 0].max()) + patch_px,
                        int(xy[:, 1].max()) + patch_px,
                        sel,
                    )
                )
    return blocks


def read_target_box(
    reader: SlideReader, choice: LevelChoice, box: tuple[int, int, int, int]
) -> np.ndarray:
    """Pixels of a box given in target pixels, read from the chosen level and resampled."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0, y1 - y0
    level_w, level_h = reader.level_dimensions[choice.level]
    ds = choice.level_downsample
    if not choice.needs_resize:
        return reader.read_region((round(x0 * ds), round(y0 * ds)), choice.level, (width, height))
    f = choice.resize_factor  # level pixels per target pixel
    fx0, fy0, fx1, fy1 = x0 * f, y0 * f, x1 * f, y1 * f
    lx0, ly0 = math.floor(fx0), math.floor(fy0)
    lx1, ly1 = min(level_w, math.ceil(fx1)), min(level_h, math.ceil(fy1))
    level_box = (lx0, ly0, lx1, ly1)
    k = int(f // 2) if f >= REDUCE_FROM else 1
    if k > 1:
        region = _read_reduced(reader, choice.level, ds, level_box, k)
    else:
        region = reader.read_region(
            (round(lx0 * ds), round(ly0 * ds)), choice.level, (lx1 - lx0, ly1 - ly0)
        )
    resized = Image.fromarray(region).resize(
        (width, height),
        Image.Resampling.LANCZOS,
        box=(
            (fx0 - lx0) / k,
            (fy0 - ly0) / k,
            (min(fx1, lx1) - lx0) / k,
            (min(fy1, ly1) - ly0) / k,
        ),
    )
    return np.asarray(resized)


def _read_reduced(
    reader: SlideReader, level: int, ds: float, box: tuple[int, int, int, int], k: int
) -> np.ndarray:
    """``box`` of ``level`` averaged over k x k pixels, read in tiles whose sides are
    multiples of k from the box's origin, so the result is the same as one big read's."""
    lx0, ly0, lx1, ly1 = box
    step = max(k, REDUCE_TILE_PX // k * k)
    rows = []
    for y in range(ly0, ly1, step):
        row = []
        for x in range(lx0, lx1, step):
            size = (min(step, lx1 - x), min(step, ly1 - y))
            tile = reader.read_region((round(x * ds), round(y * ds)), level, size)
            row.append(np.asarray(Image.fromarray(tile).reduce(k)))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


@dataclass(frozen=True)
class PatchRead:
    """One patch, or ``None`` pixels with the error when its region could not be decoded.

    ``pixels`` may be a view into its block: consumers copy it where they keep it (the store
    writer and the inference batches do), so no patch is copied twice on its way out.
    """

    index: int
    pixels: np.ndarray | None
    error: str | None = None


def iter_patches(
    reader: SlideReader,
    choice: LevelChoice,
    target_xy: np.ndarray,
    patch_px: int,
    stride_px: int,
    threads: int | None,
    on_block: Callable[[int], None] | None = None,
) -> Iterator[PatchRead]:
    """Yield every grid patch in row-major order within blocks, block after block, read by
    ``threads`` threads (None: READ_THREADS).

    A block that fails to decode is retried patch by patch, so one corrupt tile costs only
    the patches that touch it.
    """
    threads = threads or READ_THREADS
    blocks = plan_blocks(target_xy, patch_px, stride_px)
    in_flight = threads + 2  # a block per thread and two ready: memory follows the threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsi-read") as pool:
        futures: list[Future[list[PatchRead]]] = []
        next_block = 0
        while next_block < len(blocks) or futures:
            while next_block < len(blocks) and len(futures) < in_flight:
                block = blocks[next_block]
                futures.append(pool.submit(_read_block, reader, choice, target_xy, patch_px, block))
                next_block += 1
            reads = futures.pop(0).result()
            yield from reads
            if on_block is not None:
                on_block(len(reads))


def _read_block(
    reader: SlideReader, choice: LevelChoice, target_xy: np.ndarray, patch_px: int, block: Block
) -> list[PatchRead]:
    try:
        pixels = read_target_box(reader, choice, (block.x0, block.y0, block.x1, block.y1))
    except SlideReadError:
        return [_read_single(reader, choice, target_xy, patch_px, int(i)) for i in block.indices]
    reads = []
    for i in block.indices:
        x, y = target_xy[i, 0] - block.x0, target_xy[i, 1] - block.y0
        reads.append(PatchRead(int(i), pixels[y : y + patch_px, x : x + patch_px]))
    return reads


def _read_single(
    reader: SlideReader, choice: LevelChoice, target_xy: np.ndarray, patch_px: int, index: int
) -> PatchRead:
    x, y = int(target_xy[index, 0]), int(target_xy[index, 1])
    try:
        pixels = read_target_box(reader, choice, (x, y, x + patch_px, y + patch_px))
    except SlideReadError as exc:
        log.debug("patch %d unreadable: %s", index, exc)
        return PatchRead(index, None, str(exc))
    return PatchRead(index, pixels)
