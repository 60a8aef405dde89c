"""Adapter for tiffslide (pure Python on tifffile; SVS, generic and OME TIFF, NDPI).

Plain tiled RGB levels are decoded directly (see ``tiff_tiles``) so reads scale across
threads; other layouts go through tiffslide's ``read_region``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsi_pixelcam.slide.base import BackendChoice, SlideReader
from wsi_pixelcam.slide.tiff_tiles import tiled_levels


class TiffSlideReader(SlideReader):
    def __init__(self, path: Path, reason: str) -> None:
        import tiffslide

        self._slide: Any = tiffslide.TiffSlide(path)
        super().__init__(path, BackendChoice("tiffslide", tiffslide.__version__, reason))
        self._fast, self._fd = tiled_levels(self._slide.ts_tifffile, self.level_dimensions, path)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> Mapping[str, str]:
        return {k: str(v) for k, v in self._slide.properties.items() if v is not None}

    def _read_region(
        self, xy_level0: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        fast = self._fast[level]
        if fast is None:
            return np.asarray(self._slide.read_region(xy_level0, level, size, as_array=True))
        ds = self.level_downsamples[level]
        return fast.read(int(xy_level0[0] / ds), int(xy_level0[1] / ds), size[0], size[1])

    def close(self) -> None:
        os.close(self._fd)
        self._slide.close()
