"""Adapter for tiffslide (pure Python on tifffile; SVS, generic and OME TIFF, NDPI)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsi_pixelcam.slide.base import BackendChoice, SlideReader


class TiffSlideReader(SlideReader):
    def __init__(self, path: Path, reason: str) -> None:
        import tiffslide

        self._slide: Any = tiffslide.TiffSlide(path)
        super().__init__(path, BackendChoice("tiffslide", tiffslide.__version__, reason))

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> Mapping[str, str]:
        return {k: str(v) for k, v in self._slide.properties.items() if v is not None}

    @property
    def tiff_series_levels(self) -> Any:
        """tifffile's pages for each level, for TIFF tag fallbacks (resolution tags)."""
        return self._slide.ts_tifffile.series[self._slide.ts_series_index].levels

    def _read_region(
        self, xy_level0: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        return np.asarray(self._slide.read_region(xy_level0, level, size, as_array=True))

    def close(self) -> None:
        self._slide.close()
