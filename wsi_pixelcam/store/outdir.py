"""Output locations: check a directory up front, so a typo in an output path fails in one line
before any work starts (files are then written with :mod:`wsi_pixelcam.atomic_write`).
"""

from __future__ import annotations

import os
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
