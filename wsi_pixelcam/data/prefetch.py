"""Read ahead in a background thread when loader processes are not allowed.

Inside a dask worker (a daemonic process) a DataLoader cannot start worker processes, so
patches would be read and decoded only while the model waits. One thread reading a few
batches ahead overlaps the two: zarr decodes JPEG chunks in its own threads and torch
releases the GIL while it computes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order while a thread produces up to ``depth`` of them ahead.

    An exception in the producer is raised here, at the item where it happened. Closing
    the generator early stops the producer at its next item.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    ready: queue.Queue[object] = queue.Queue(depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer
            failure.append(exc)
        ready.put(_DONE)

    thread = threading.Thread(target=produce, name="wsi-prefetch", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _DONE:
            yield item  # type: ignore[misc]
        if failure:
            raise failure[0]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(0.05)
