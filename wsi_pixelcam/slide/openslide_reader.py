"""Adapter for openslide-python with openslide-bin (adds MRXS, NDPI, DICOM, VMS, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsi_pixelcam.slide.base import BackendChoice, SlideReader


class OpenSlideReader(SlideReader):
    def __init__(self, path: Path, reason: str) -> None:
        import openslide

        self._slide: Any = openslide.OpenSlide(path)
        version = f"{openslide.__version__} (library {openslide.__library_version__})"
        super().__init__(path, BackendChoice("openslide", version, reason))

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> Mapping[str, str]:
        return dict(self._slide.properties)

    def _read_region(
        self, xy_level0: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        return np.asarray(self._slide.read_region(xy_level0, level, size))

    def close(self) -> None:
        self._slide.close()
