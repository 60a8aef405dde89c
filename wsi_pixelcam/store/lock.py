"""An exclusive lock file beside a store, so two runs never build the same store.

Created with O_CREAT | O_EXCL (atomic on local and NFSv3+ filesystems). A lock left by a
process that no longer runs on this host is taken over; a live or foreign-host lock is an
error naming the lock file to delete if the user knows no run is active.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from wsi_pixelcam.errors import StoreError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """Context manager holding ``<target>.lock`` while a store (or ``what``) is written."""

    def __init__(self, target: Path, what: str = "this store") -> None:
        self.path = target.with_name(target.name + ".lock")
        self.what = what
        self._held = False

    def acquire(self) -> None:
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._is_stale():
                    self.path.unlink(missing_ok=True)
                    continue
                raise StoreError(
                    f"{self.path}: another run is writing {self.what} ({self._describe()}); "
                    "if none is running, delete the lock file"
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(owner, handle)
            self._held = True
            return
        raise StoreError(f"{self.path}: could not take the lock")

    def _read_owner(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _is_stale(self) -> bool:
        owner = self._read_owner()
        if not owner:  # half-written by a crashed run, or unreadable: give it a minute
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except OSError:
                return True
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname() or not isinstance(pid, int):
            return False
        return not _pid_alive(pid)

    def _describe(self) -> str:
        owner = self._read_owner()
        return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
