"""The one reader interface every backend adapter implements.

Coordinates are level-0 (x, y); sizes are (w, h) at the requested level; pixels come back
as (H, W, 3) uint8 RGB with transparent areas composited on white, like tiffslide's
``read_region(..., as_array=True)``. Readers are context managers and safe to call from a
thread pool (both backends decode under their own locks).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from wsi_pixelcam.errors import SlideReadError


@dataclass(frozen=True)
class BackendChoice:
    """Which backend opened a slide and why (recorded in every store)."""

    name: str
    version: str
    reason: str


class SlideReader(abc.ABC):
    """A slide opened by one backend."""

    def __init__(self, path: Path, backend: BackendChoice) -> None:
        self.path = path
        self.backend = backend

    # --- geometry -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(w, h) of each pyramid level, level 0 first."""

    @property
    @abc.abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each level relative to level 0."""

    @property
    @abc.abstractmethod
    def properties(self) -> Mapping[str, str]:
        """Backend metadata (``openslide.*`` or ``tiffslide.*`` keys)."""

    @property
    def dimensions(self) -> tuple[int, int]:
        """(w, h) of level 0."""
        return self.level_dimensions[0]

    @property
    def bounds_offset(self) -> tuple[int, int]:
        """(x, y) of the scanned area inside level 0; QuPath crops to it by default."""
        props = self.properties
        prefix = self.backend.name
        try:
            return (
                int(props.get(f"{prefix}.bounds-x", 0) or 0),
                int(props.get(f"{prefix}.bounds-y", 0) or 0),
            )
        except ValueError:
            return (0, 0)

    # --- pixels ---------------------------------------------------------------------------
    def read_region(
        self, xy_level0: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size`` (w, h) pixels of ``level`` whose top-left is ``xy_level0``.

        Raises SlideReadError naming the file and region when the backend cannot decode it.
        """
        try:
            pixels = self._read_region(xy_level0, level, size)
        except Exception as exc:  # backends raise anything from decoder errors to KeyError
            raise SlideReadError(
                f"{self.path}: cannot decode region x={xy_level0[0]} y={xy_level0[1]} "
                f"level={level} size={size[0]}x{size[1]} ({type(exc).__name__}: {exc})"
            ) from exc
        return to_rgb(pixels)

    @abc.abstractmethod
    def _read_region(
        self, xy_level0: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Backend read, any of RGB / RGBA / grey, (H, W[, C]) uint8."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file handle."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from grey, RGB or RGBA; transparent pixels become white."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.uint16)
        rgb = arr[:, :, :3].astype(np.uint16)
        return ((rgb * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])
