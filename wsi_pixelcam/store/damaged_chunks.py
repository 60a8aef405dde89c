"""Reading a store array's rows so that a damaged chunk is reported as the user's to fix.

zarr reports a corrupt shard as a checksum mismatch with raw bytes, and a broken JPEG or zstd
chunk as a codec error; neither names the store or says what to do. The patches are the
store's own copy of the slide, so the remedy is always to tile the slide again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsi_pixelcam.errors import DataError


def read_rows(array: Any, rows: int | slice, store_path: Path) -> np.ndarray:
    """``array[rows]`` as numpy; DataError naming the store and its slide if a chunk is damaged."""
    try:
        return np.asarray(array[rows])
    except (ValueError, RuntimeError, OSError) as exc:  # checksum, codec and read errors
        # the first sentence: zarr's checksum message goes on with the raw bytes
        reason = str(exc).splitlines()[0].split(". ")[0][:120] if str(exc) else ""
        raise DataError(
            f"{store_path}: patch store of slide {_slide_id(store_path)!r} is damaged "
            f"({array.basename} rows {_rows_text(rows)}: {reason or type(exc).__name__}); "
            "re-tile the slide with --overwrite"
        ) from exc


def _slide_id(store_path: Path) -> str:
    import zarr

    try:
        return str(zarr.open_group(store_path, mode="r").attrs.get("slide_id", store_path.stem))
    except Exception:  # the group's metadata may be damaged too: the folder name is the id
        return store_path.stem


def _rows_text(rows: int | slice) -> str:
    if isinstance(rows, slice):
        return f"{rows.start}-{rows.stop - 1}" if rows.stop is not None else f"{rows.start}-"
    return str(rows)
