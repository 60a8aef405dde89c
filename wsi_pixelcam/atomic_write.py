"""Atomic writes: a file or directory appears under its final name complete, or not at all.

Everything is built under a temporary name beside its destination (same filesystem, so the
rename is atomic) and renamed into place only once finished. ``durable=True`` also flushes the
data and the rename to disk before returning, for outputs that are expensive to rebuild
(checkpoints, finished patch stores): without it a power cut shortly after the rename can
leave an empty file under the final name.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"
"""Directories being built or moved aside are named ``<final name>.tmp-<id>``, so a later run
can find what a killed one left behind."""


@contextmanager
def replaced_when_done(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block completes.

    If the block raises, the temporary file is deleted and ``path`` is left as it was.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)


def replace_dir(src: Path, dst: Path, *, durable: bool = False) -> None:
    """Move directory ``src`` to ``dst``; an existing ``dst`` is moved aside, then deleted."""
    if durable:
        for folder, _, files in os.walk(src):
            for name in files:
                fsync_path(Path(folder, name))
            fsync_path(Path(folder))
    old = None
    if dst.exists():
        old = dst.with_name(f"{dst.name}{TMP_MARK}old-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
    os.replace(src, dst)
    if durable:
        fsync_path(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
