"""Direct tile decoding for tiled RGB TIFF levels, used by the tiffslide adapter.

tiffslide reads through zarr, whose single event-loop thread decodes every tile, so reads
from a thread pool do not run in parallel. For plain tiled 8-bit RGB/YCbCr pages this module
reads the tiles' bytes with ``os.pread`` (no shared file position, so no lock) and decodes them
with tifffile's own ``TiffPage.decode`` in the calling thread, where imagecodecs releases the
GIL. Anything else (strips, planar data, odd sample counts) returns None and the caller uses
tiffslide's ``read_region``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

_CONTIG = 1


class TiledLevel:
    """One tiled TIFF page, readable by region in level pixels from many threads at once."""

    def __init__(self, page: Any, fd: int) -> None:
        self._page = page
        self._fd = fd
        self.tile_w = int(page.tilewidth)
        self.tile_h = int(page.tilelength)
        self.width = int(page.imagewidth)
        self.height = int(page.imagelength)
        self._tiles_x = -(-self.width // self.tile_w)

    @staticmethod
    def supports(page: Any) -> bool:
        return bool(
            page.is_tiled
            and page.planarconfig == _CONTIG
            and page.samplesperpixel in (3, 4)
            and np.dtype(page.dtype) == np.uint8
            and page.imagedepth == 1
        )

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) pixels at level coordinates; outside the image is white."""
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        inside = (x0, y0, x1, y1) == (x, y, x + w, y + h)
        # tiles overwrite every pixel of a request inside the image: no white fill (a block
        # read is megabytes, and filling it cost as much as a tenth of the tiler's time)
        out = np.empty((h, w, 3), np.uint8) if inside else np.full((h, w, 3), 255, np.uint8)
        if x1 <= x0 or y1 <= y0:
            return out
        page = self._page
        for ty in range(y0 // self.tile_h, (y1 - 1) // self.tile_h + 1):
            for tx in range(x0 // self.tile_w, (x1 - 1) // self.tile_w + 1):
                # overlap of this tile with the request, in level coordinates
                tx0, ty0 = tx * self.tile_w, ty * self.tile_h
                ox0, oy0 = max(x0, tx0), max(y0, ty0)
                ox1, oy1 = min(x1, tx0 + self.tile_w), min(y1, ty0 + self.tile_h)
                target = out[oy0 - y : oy1 - y, ox0 - x : ox1 - x]
                index = ty * self._tiles_x + tx
                count = int(page.databytecounts[index])
                if count == 0:
                    target.fill(255)  # a sparse TIFF's missing tile is white
                    continue
                data = os.pread(self._fd, count, int(page.dataoffsets[index]))
                tile, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
                tile = tile.reshape(self.tile_h, self.tile_w, -1)[:, :, :3]
                target[...] = tile[oy0 - ty0 : oy1 - ty0, ox0 - tx0 : ox1 - tx0]
        return out


def tiled_levels(
    tif: Any, level_dimensions: tuple[tuple[int, int], ...], path: os.PathLike[str] | str
) -> tuple[list[TiledLevel | None], int]:
    """A fast reader per level (None where the page does not qualify) and the fd to close."""
    fd = os.open(path, os.O_RDONLY)
    by_size: dict[tuple[int, int], Any] = {}
    for level in tif.series[0].levels:
        page = level.pages[0] if level.pages else None
        if page is not None and hasattr(page, "imagewidth"):
            by_size.setdefault((int(page.imagewidth), int(page.imagelength)), page)
    readers: list[TiledLevel | None] = []
    for size in level_dimensions:
        page = by_size.get(size)
        usable = page is not None and TiledLevel.supports(page)
        readers.append(TiledLevel(page, fd) if usable else None)
    return readers, fd
