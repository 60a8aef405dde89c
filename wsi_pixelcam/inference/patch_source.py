"""Where inference gets its patches: a patch store, or a slide read while it is predicted.

One small interface, :class:`PatchSource`, so that prediction, stitching and the outputs are
the same code for both. A source hands out uint8 (B, P, P, 3) batches with the rows they
fill: ``coords`` and ``tissue_frac`` are indexed by those rows, and a row never handed out
(a patch the slide could not decode) is left out of every output.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

from wsi_pixelcam.data.prefetch import prefetch
from wsi_pixelcam.errors import StoreError
from wsi_pixelcam.model.checkpoint import CheckpointMeta
from wsi_pixelcam.store.damaged_chunks import read_rows
from wsi_pixelcam.store.patch_store import PatchStore, open_patch_store

logger = logging.getLogger(__name__)

RowsBatch = tuple[np.ndarray, torch.Tensor]
"""(source rows (B,) int64, uint8 patches (B, P, P, 3)), on the host (pinned on CUDA)."""


@dataclass(frozen=True)
class SourceGeometry:
    """Where the source's patches sit on the slide, in the units the outputs need."""

    mpp0: float  # level-0 um/px
    width0: int
    height0: int
    bounds: tuple[int, int]  # the slide's bounds offset (QuPath's frame origin)
    patch_level0: float
    stride_level0: float
    patch_mpp: float


class PatchSource(Protocol):
    """What inference needs from its patches, whichever way they arrive."""

    @property
    def slide_id(self) -> str: ...

    @property
    def where(self) -> Path:
        """The file named in errors and logs (the store, or the slide)."""
        ...

    @property
    def coords(self) -> np.ndarray:
        """(N, 2) int64 level-0 (x, y) of each row's top-left."""
        ...

    @property
    def tissue_frac(self) -> np.ndarray:
        """(N,) float32 tissue fraction of each row."""
        ...

    def __len__(self) -> int: ...

    def check_fits(self, meta: CheckpointMeta, tolerance: float) -> None:
        """TilingMismatchError when the patches are not cut the way the model was trained."""
        ...

    def geometry(self) -> SourceGeometry:
        """StoreError when no heatmap can be placed from these patches."""
        ...

    def identity(self) -> dict[str, Any]:
        """What the outputs were made from: outputs made from anything else are stale."""
        ...

    def describe(self) -> dict[str, Any]:
        """The summary's ``source`` fields (read after the batches are exhausted)."""
        ...

    def thumbnail(self) -> np.ndarray | None:
        """The slide's RGB thumbnail for the overlay, if there is one."""
        ...

    def write_qc(self, out_dir: Path) -> str | None:
        """Tissue QC files into ``out_dir/<name>``; the name, or None when kept elsewhere."""
        ...

    def batches(self, batch_size: int, *, workers: int, pin_memory: bool) -> Iterable[RowsBatch]:
        """Every readable row once, in row order, ``batch_size`` patches per batch."""
        ...


class StoreSource:
    """A complete patch store: rows are its patches, read by DataLoader worker processes."""

    def __init__(self, store: PatchStore) -> None:
        self.store = store

    @property
    def slide_id(self) -> str:
        return self.store.slide_id

    @property
    def where(self) -> Path:
        return self.store.path

    @property
    def coords(self) -> np.ndarray:
        return self.store.coords

    @property
    def tissue_frac(self) -> np.ndarray:
        return self.store.tissue_frac

    def __len__(self) -> int:
        return len(self.store)

    def check_fits(self, meta: CheckpointMeta, tolerance: float) -> None:
        self.store.meta.check_fits(
            patch_px=meta.patch_px,
            mpp=meta.mpp,
            tolerance=tolerance,
            reference="the model",
            where=self.store.path,
        )

    def geometry(self) -> SourceGeometry:
        meta = self.store.meta
        if meta.mpp_level0 is None or meta.patch_mpp is None:
            raise StoreError(
                f"{self.store.path}: the patch store does not know its resolution (um/px), so "
                "no heatmap can be placed; write it with an mpp (or tile the slide file, "
                "passing --mpp)"
            )
        if len(self.store) == 0:
            raise StoreError(f"{self.store.path}: the patch store holds no patches")
        width0, height0 = meta.slide.dimensions_level0
        return SourceGeometry(
            mpp0=meta.mpp_level0,
            width0=width0,
            height0=height0,
            bounds=meta.slide.bounds_offset,
            patch_level0=meta.tiling.patch_level0,
            stride_level0=meta.tiling.stride_level0,
            patch_mpp=meta.patch_mpp,
        )

    def identity(self) -> dict[str, Any]:
        return {
            "path": str(self.store.path.resolve()),
            "created": self.store.meta.created,
            "n_patches": len(self.store),
            "content_hash": self.store.meta.slide.content_hash,
        }

    def describe(self) -> dict[str, Any]:
        return {"store": str(self.store.path)}

    def thumbnail(self) -> np.ndarray | None:
        node = self.store.group.get("thumbnail")
        if not isinstance(node, zarr.Array):
            logger.info("%s: no thumbnail in the patch store; overlay.png skipped", self.where)
            return None
        return np.asarray(node[...])

    def write_qc(self, out_dir: Path) -> str | None:
        return None  # the tiler wrote them beside the store: <slide_id>.qc/

    def batches(self, batch_size: int, *, workers: int, pin_memory: bool) -> Iterable[RowsBatch]:
        workers = _loader_workers(workers)
        loader = DataLoader(
            _StoreBatches(self.store.path, len(self.store), batch_size),
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        return loader if workers else prefetch(loader, depth=2)


class _StoreBatches(Dataset[RowsBatch]):
    """Contiguous ranges of a patch store; each worker opens the store on first use."""

    def __init__(self, path: Path, n_patches: int, batch_size: int) -> None:
        self.path = path
        self.n_patches = n_patches
        self.batch_size = batch_size
        self._patches: Any = None

    def __len__(self) -> int:
        return math.ceil(self.n_patches / self.batch_size)

    def __getitem__(self, index: int) -> RowsBatch:
        if self._patches is None:
            self._patches = open_patch_store(self.path).patches
        start = index * self.batch_size
        stop = min(start + self.batch_size, self.n_patches)
        rows = read_rows(self._patches, slice(start, stop), self.path)
        return np.arange(start, stop), torch.from_numpy(np.ascontiguousarray(rows))


def _loader_workers(requested: int) -> int:
    """Worker processes the loader may start: none inside a daemonic process (a dask worker)."""
    if requested > 0 and multiprocessing.current_process().daemon:
        logger.info(
            "running in a daemonic process (dask worker): decoding patches in a reader thread"
        )
        return 0
    return requested
