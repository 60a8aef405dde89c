"""Output locations: check a directory up front, write files so none is ever half-written.

A typo in an output path fails in one line before any work starts; a file is written under a
temporary name beside its final one and renamed into place only once complete.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wsi_pixelcam.errors import OutputError


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` if needed; raise OutputError naming it when it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot create output directory ({exc.strerror or exc})"
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: output directory is not writable")
    return path


@contextmanager
def replaced_when_done(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block completes.

    If the block raises, the temporary file is deleted and ``path`` is left as it was.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
