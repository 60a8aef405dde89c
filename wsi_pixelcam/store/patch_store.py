"""The patch store: one zarr v3 group per slide, the contract between tiling and the model.

Arrays: ``patches`` (N, P, P, 3) uint8, ``coords`` (N, 2) int64 level-0 (x, y) top-left,
``tissue_frac`` (N,) float32, ``labels`` (N,) int16 (-1 unlabelled), ``label_coverage`` (N,)
float32, ``thumbnail`` (h, w, 3) and ``tissue_mask`` (h, w) for QC; ``masks`` (N, M, M) uint8
ROI masks (M from :func:`mask_px_for`) when the slide was tiled from annotations. Later stages
may add ``cams`` and ``masks``. Attrs hold a :class:`PatchStoreMeta` (validated on open), the
records of arrays added later, and ``complete: true``, written last. The store is built under
a temporary name beside its final path and renamed into place when complete, so a crash never
leaves something that looks finished.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, ZstdCodec

from wsi_pixelcam.atomic_write import TMP_MARK, fsync_path, replace_dir
from wsi_pixelcam.errors import StoreError
from wsi_pixelcam.store.jpeg_codec import JpegCodec
from wsi_pixelcam.store.meta import SCHEMA, PatchStoreMeta

_COMPLETE = "complete"  # the attr written last: a store without it is unfinished
MASK_MAX_PX = 128
MASK_CHUNK_ROWS = 64  # at most 1 MiB of raw masks per chunk


SHARDS_IN_FLIGHT = 2
"""Shards a writer encodes at once while the next one fills: one more keeps the cores busy
while the last patches of a shard are encoded."""


def mask_px_for(patch_px: int) -> int:
    """Side of a patch's stored ROI mask: the patch's, capped at MASK_MAX_PX.

    Localisation is scored on maps resized to ``eval.eval_px`` (224 by default), so masks of
    large patches gain nothing from full resolution; capped, a cohort of 512 px patches keeps
    raw masks 48x smaller than its raw patches.
    """
    return min(patch_px, MASK_MAX_PX)


def shard_patches(patch_px: int, shard_mib: float) -> int:
    """Patches per shard so one uncompressed shard is about ``shard_mib`` MiB (1..1024)."""
    per_patch = patch_px * patch_px * 3
    return int(max(1, min(1024, (shard_mib * 2**20) // per_patch)))


class PatchStoreWriter:
    """Builds a store under a temporary name; :meth:`finalize` renames it into place.

    Patches are appended in order and flushed one whole shard at a time, so no shard is
    ever read back and rewritten.
    """

    def __init__(
        self,
        final_path: Path,
        *,
        patch_px: int,
        capacity: int,
        compression: str = "jpeg",
        jpeg_quality: int = 90,
        shard_mib: float = 16.0,
    ) -> None:
        self.final_path = Path(final_path)
        self.tmp_path = self.final_path.with_name(
            f"{self.final_path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
        )
        self.patch_px = patch_px
        self._shard = shard_patches(patch_px, shard_mib)
        self._group = zarr.open_group(self.tmp_path, mode="w-", zarr_format=3)
        # says what it is from the start, and that it is unfinished until finalize
        self._group.attrs.update({"schema": SCHEMA, _COMPLETE: False})
        capacity = max(capacity, 1)
        if compression == "jpeg":
            serializer: Any = JpegCodec(quality=jpeg_quality)
            compressors: Any = None
        else:
            serializer, compressors = BytesCodec(), ZstdCodec(level=5)
        self._patches = self._group.create_array(
            "patches",
            shape=(capacity, patch_px, patch_px, 3),
            chunks=(1, patch_px, patch_px, 3),
            shards=(self._shard, patch_px, patch_px, 3),
            dtype="uint8",
            serializer=serializer,
            compressors=compressors,
            dimension_names=("patch", "y", "x", "rgb"),
            # every patch holds tissue: skip zarr's per-chunk "all fill value?" scan (40% of
            # write time when profiled)
            config={"write_empty_chunks": True},
        )
        # one shard fills while others are encoded and written in the background; their
        # buffers are reused, so no patch is copied twice and no shard is allocated anew
        shard_shape = (self._shard, patch_px, patch_px, 3)
        self._free = [np.empty(shard_shape, np.uint8) for _ in range(SHARDS_IN_FLIGHT + 1)]
        self._filling = self._free.pop()
        self._filled = 0
        self._coords: list[tuple[int, int]] = []
        self._tissue: list[float] = []
        self._written = 0
        self._writer = ThreadPoolExecutor(SHARDS_IN_FLIGHT, thread_name_prefix="wsi-store")
        self._pending: deque[tuple[Future[None], np.ndarray]] = deque()
        # written shards are flushed to disk by another thread, so a slow disk never holds
        # up encoding; finalize's durable rename then finds little left to flush
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsi-store-sync")
        self._syncs: list[Future[None]] = []

    @property
    def count(self) -> int:
        return self._written + self._filled

    def append(self, patch: np.ndarray, xy_level0: tuple[int, int], tissue_frac: float) -> None:
        """Copy ``patch`` (P, P, 3) uint8, which may be a view into a larger image."""
        if patch.shape != self._filling.shape[1:]:
            raise ValueError(
                f"patch of shape {patch.shape}, the store holds {self._filling.shape[1:]}"
            )
        self._filling[self._filled] = patch
        self._filled += 1
        self._coords.append(xy_level0)
        self._tissue.append(tissue_frac)
        if self._filled == self._shard:
            self._flush()

    def _flush(self) -> None:
        if not self._filled:
            return
        start = self._written
        stop = start + self._filled
        if len(self._pending) == SHARDS_IN_FLIGHT:
            self._wait_oldest()  # its buffer is the next to fill
        if stop > self._patches.shape[0]:
            self._wait()  # no write may race the metadata change
            self._patches.resize((stop, *self._patches.shape[1:]))
        block = self._filling[: self._filled]
        self._pending.append((self._writer.submit(self._write_shard, start, block), self._filling))
        self._filling = self._free.pop()
        self._written = stop
        self._filled = 0

    def _write_shard(self, start: int, block: np.ndarray) -> None:
        self._patches[start : start + len(block)] = block
        key = self._patches.metadata.encode_chunk_key((start // self._shard, 0, 0, 0))
        path = self.tmp_path / self._patches.path / key
        self._syncs.append(self._syncer.submit(fsync_path, path))

    def _wait_oldest(self) -> None:
        written, buffer = self._pending.popleft()
        written.result()
        self._free.append(buffer)

    def _wait(self) -> None:
        while self._pending:
            self._wait_oldest()

    def add_rows(
        self,
        name: str,
        *,
        shape: tuple[int, ...],
        dtype: str,
        chunk_rows: int,
        blocks: Iterable[tuple[int, np.ndarray]],
        record: Mapping[str, Any],
    ) -> None:
        """Write a per-patch array beside the patches, before :meth:`finalize`, with its
        provenance ``record`` (as arrays added later have one).

        ``shape[0]`` must be the number of patches appended: rows follow the patches' order.
        """
        if shape[0] != self.count:
            raise ValueError(f"{name} has {shape[0]} rows for {self.count} patches")
        write_rows(
            self._group, name, shape=shape, dtype=dtype, chunk_rows=chunk_rows, blocks=blocks
        )
        record_derived(self._group, name, record, complete=True)

    def finalize(
        self,
        meta: PatchStoreMeta,
        *,
        labels: np.ndarray | None = None,
        label_coverage: np.ndarray | None = None,
        thumbnail: np.ndarray | None = None,
        tissue_mask: np.ndarray | None = None,
    ) -> Path:
        """Write the small arrays and ``meta``, mark complete, rename into place."""
        self._flush()
        self._wait()
        self._writer.shutdown()
        for synced in self._syncs:
            synced.result()
        self._syncer.shutdown()
        n = self._written
        if meta.n_patches != n or meta.tiling.patch_px != self.patch_px:
            raise ValueError(
                f"meta describes {meta.n_patches} patches of {meta.tiling.patch_px} px, "
                f"the writer holds {n} of {self.patch_px} px"
            )
        self._patches.resize((n, *self._patches.shape[1:]))
        small: dict[str, np.ndarray] = {
            "coords": np.asarray(self._coords, dtype=np.int64).reshape(n, 2),
            "tissue_frac": np.asarray(self._tissue, dtype=np.float32),
            "labels": (np.full(n, -1, np.int16) if labels is None else labels.astype(np.int16)),
            "label_coverage": (
                np.zeros(n, np.float32)
                if label_coverage is None
                else label_coverage.astype(np.float32)
            ),
        }
        if thumbnail is not None:
            small["thumbnail"] = thumbnail.astype(np.uint8)
        if tissue_mask is not None:
            small["tissue_mask"] = tissue_mask.astype(np.uint8)
        for name, values in small.items():
            if values.shape[:1] != (n,) and name not in ("thumbnail", "tissue_mask"):
                raise ValueError(f"{name} has {values.shape[0]} rows for {n} patches")
            _write_small(self._group, name, values)
        self._group.attrs.update(meta.to_attrs())
        self._group.attrs[_COMPLETE] = True
        replace_dir(self.tmp_path, self.final_path, durable=True)
        return self.final_path

    def abort(self) -> None:
        """Remove the temporary store (on error); the final path is untouched."""
        self._writer.shutdown(wait=True, cancel_futures=True)
        self._syncer.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.tmp_path, ignore_errors=True)


def _write_small(group: zarr.Group, name: str, values: np.ndarray) -> None:
    chunks = values.shape if values.size else tuple(max(1, s) for s in values.shape)
    arr = group.create_array(
        name,
        shape=values.shape,
        chunks=chunks,
        dtype=values.dtype,
        compressors=ZstdCodec(level=3),
        overwrite=True,
    )
    if values.size:
        arr[...] = values


def write_rows(
    group: zarr.Group,
    name: str,
    *,
    shape: tuple[int, ...],
    dtype: str,
    chunk_rows: int,
    blocks: Iterable[tuple[int, np.ndarray]],
) -> None:
    """Create array ``name`` (N, ...), chunked by ``chunk_rows`` rows, from ``blocks`` of
    (first row, rows); RuntimeError unless the blocks fill it, so no array is left short."""
    array = group.create_array(
        name,
        shape=shape,
        chunks=(max(1, min(chunk_rows, shape[0])), *shape[1:]),
        dtype=dtype,
        compressors=ZstdCodec(level=3),
        overwrite=True,
    )
    written = 0
    for start, rows in blocks:
        array[start : start + len(rows)] = rows
        written += len(rows)
    if written != shape[0]:
        raise RuntimeError(f"wrote {written} of {shape[0]} rows of {name}")


def remove_stale_temporaries(final_path: Path) -> list[Path]:
    """Delete temporaries a killed run left beside ``final_path`` (call while holding its lock)."""
    stale = sorted(final_path.parent.glob(f"{final_path.name}{TMP_MARK}*"))
    qc = final_path.with_suffix(".qc")
    stale += sorted(qc.parent.glob(f"{qc.name}{TMP_MARK}*"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def json_safe(value: Any) -> Any:
    """Round-trip through JSON so numpy scalars and paths become plain values."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass(frozen=True)
class PatchStore:
    """A complete patch store opened for reading (arrays stay lazy on disk)."""

    path: Path
    group: zarr.Group
    meta: PatchStoreMeta

    @property
    def patches(self) -> zarr.Array:
        return self._array("patches")

    @property
    def coords(self) -> np.ndarray:
        return np.asarray(self._array("coords")[...])

    @property
    def tissue_frac(self) -> np.ndarray:
        return np.asarray(self._array("tissue_frac")[...])

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self._array("labels")[...])

    @property
    def label_coverage(self) -> np.ndarray:
        return np.asarray(self._array("label_coverage")[...])

    @property
    def classes(self) -> list[str]:
        return list(self.meta.labels.classes)

    @property
    def slide_id(self) -> str:
        return self.meta.slide_id

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    def has(self, name: str) -> bool:
        return name in self.group

    def derived_record(self, name: str) -> dict[str, Any] | None:
        """The provenance record of an array added after tiling (``cams``, ``masks``), with
        ``complete`` false while it is being written; None if never started."""
        record = self.group.attrs.get(name)
        return dict(record) if isinstance(record, Mapping) else None

    def _array(self, name: str) -> zarr.Array:
        node = self.group.get(name)
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{self.path}: no '{name}' array in the patch store")
        return node


def record_derived(
    group: zarr.Group, name: str, record: Mapping[str, Any], *, complete: bool
) -> None:
    """Set the provenance record of derived array ``name``; ``complete`` last, once it is in
    place, so an interrupted addition is seen as unfinished."""
    group.attrs[name] = {**json_safe(dict(record)), _COMPLETE: complete}


def is_patch_store(path: Path) -> bool:
    """Whether ``path`` is a zarr group that says it is a patch store (complete or not)."""
    attrs = _read_attrs(path)
    return attrs is not None and attrs.get("schema") == SCHEMA


def find_complete_store(path: Path) -> PatchStore | None:
    """The complete store at ``path``, its attrs read once; None when there is none (absent,
    not a zarr group, unfinished). StoreError when a complete store's attrs do not validate."""
    group = _open_group(path, "r")
    if group is None:
        return None
    attrs = dict(group.attrs)
    if attrs.get(_COMPLETE) is not True:
        return None
    return PatchStore(path, group, PatchStoreMeta.from_attrs(attrs, path))


def _read_attrs(path: Path) -> dict[str, Any] | None:
    group = _open_group(path, "r")
    return None if group is None else dict(group.attrs)


def _open_group(path: Path, mode: str) -> zarr.Group | None:
    if not path.is_dir():
        return None
    try:
        return zarr.open_group(path, mode=mode)  # type: ignore[arg-type]
    except Exception:  # not a zarr group, or unreadable metadata: no store there
        return None


def open_patch_store(path: str | Path, mode: str = "r") -> PatchStore:
    """Open a complete store; an unfinished, foreign or damaged one raises StoreError saying
    what to do."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such patch store")
    group = _open_group(path, mode)
    if group is None:
        raise StoreError(f"{path}: not a zarr v3 group")
    attrs = dict(group.attrs)
    if attrs.get("schema") != SCHEMA:
        raise StoreError(f"{path}: not a wsi-pixelcam patch store")
    if attrs.get(_COMPLETE) is not True:
        raise StoreError(f"{path}: patch store is incomplete (interrupted run); re-run tile")
    return PatchStore(path, group, PatchStoreMeta.from_attrs(attrs, path))
