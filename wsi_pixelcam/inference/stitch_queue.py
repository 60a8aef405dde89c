"""Stitching in a background thread, so the CPU work overlaps the model and the patch loader.

Prediction hands each batch over and moves on; the thread gathers batches into groups of about
``group_patches`` before calling :meth:`Stitcher.add`, because each call reads and rewrites
every heatmap chunk it touches, and a store's patches come in blocks of neighbours, so a
larger group rewrites each chunk fewer times. The queue is bounded: if stitching falls
behind, prediction waits, and memory stays at a few batches plus one group.
"""

from __future__ import annotations

import queue
import threading
import time
from types import TracebackType

import numpy as np

from wsi_pixelcam.inference.stitch import Stitcher

_QUEUE_BATCHES = 4


class StitchQueue:
    """Context manager feeding a :class:`Stitcher` from a worker thread.

    Errors in the thread are raised by the next :meth:`put` or at exit. ``busy_s`` is the
    time the thread spent stitching.
    """

    def __init__(self, stitcher: Stitcher, group_patches: int = 1024) -> None:
        self.stitcher = stitcher
        self.group_patches = group_patches
        self.busy_s = 0.0
        self._queue: queue.Queue[tuple[np.ndarray, np.ndarray] | None] = queue.Queue(_QUEUE_BATCHES)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wsi-stitch", daemon=True)

    def __enter__(self) -> StitchQueue:
        self._thread.start()
        return self

    def put(self, maps: np.ndarray, xy_level0: np.ndarray) -> None:
        """Queue a batch (``Stitcher.add`` arguments); blocks while the queue is full."""
        while True:
            self._raise_if_failed()
            try:
                self._queue.put((maps, xy_level0), timeout=0.5)
                return
            except queue.Full:
                continue

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._stop.set()  # the caller failed: the thread drops what is still queued
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        maps: list[np.ndarray] = []
        xy: list[np.ndarray] = []
        pending = 0
        try:
            while (item := self._queue.get()) is not None:
                if self._stop.is_set():
                    continue
                maps.append(item[0])
                xy.append(item[1])
                pending += len(item[1])
                if pending >= self.group_patches:
                    self._add(maps, xy)
                    pending = 0
            if maps and not self._stop.is_set():
                self._add(maps, xy)
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
            while self._queue.get() is not None:  # keep the producer from blocking
                pass

    def _add(self, maps: list[np.ndarray], xy: list[np.ndarray]) -> None:
        started = time.perf_counter()
        self.stitcher.add(np.concatenate(maps), np.concatenate(xy))
        maps.clear()
        xy.clear()
        self.busy_s += time.perf_counter() - started
