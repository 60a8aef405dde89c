"""Derived arrays (teacher ``cams``, pixel ``masks``) added to a complete patch store.

The store contract lets later stages add arrays (or replace ``masks``, which are derived from
annotations whoever writes them) but never touch the patches, coords and labels tiling wrote. An
addition is built under a temporary array name, renamed into place, and only then recorded
as complete in the store's record of it (:func:`record_derived`), so an interrupted write is seen as
unfinished and redone, never read. The store's lock keeps two writers apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsi_pixelcam.atomic_write import replace_dir
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.store.lock import StoreLock
from wsi_pixelcam.store.patch_store import record_derived, write_rows


def completed_record(store_path: str | Path, name: str) -> dict[str, Any] | None:
    """The provenance record of array ``name`` if it was written to the end, else None."""
    store = open_patch_store(store_path)
    record = store.derived_record(name)
    if record is not None and record.get("complete") is True and store.has(name):
        return record
    return None


def add_array(
    store_path: str | Path,
    name: str,
    *,
    shape: tuple[int, ...],
    dtype: str,
    chunk_rows: int,
    record: Mapping[str, Any],
    blocks: Iterable[tuple[int, np.ndarray]],
) -> None:
    """Write array ``name`` (N, ...) from ``blocks`` of (first row, rows) and record it.

    ``record`` (JSON-safe) is stored as its provenance with ``complete: true`` once the array is
    in place; an existing array of that name is replaced.
    """
    path = Path(store_path)
    with StoreLock(path):
        group = open_patch_store(path, mode="r+").group
        record_derived(group, name, record, complete=False)
        partial = f"_{name}_partial"
        write_rows(group, partial, shape=shape, dtype=dtype, chunk_rows=chunk_rows, blocks=blocks)
        replace_dir(path / partial, path / name)
        record_derived(group, name, record, complete=True)
