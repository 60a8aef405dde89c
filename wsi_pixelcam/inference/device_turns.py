"""One slide at a time on a device, the rest of each slide's work beside it.

A GPU worker runs two slides at once (two threads): while one slide's batches hold the device,
the other finishes its heatmap pyramid, traces ROIs and writes GeoJSON on the CPU, or plans
its grid. Only the predictions take turns, so two slides' batches never compete for the
device's memory and the device is not left idle during a slide's fixed CPU work.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_TURNS: dict[str, threading.Lock] = {}
_TURNS_GUARD = threading.Lock()


@contextmanager
def device_turn(device: str) -> Iterator[None]:
    """Hold ``device`` (e.g. "cuda:0", "cpu") for one slide's predictions in this process."""
    with _TURNS_GUARD:
        turn = _TURNS.setdefault(device, threading.Lock())
    with turn:
        yield
