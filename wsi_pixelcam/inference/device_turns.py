"""One slide at a time on a device, the rest of each slide's work beside it.

A GPU worker runs two slides at once (two threads): while one slide's batches hold the device,
the other finishes its heatmap pyramid, traces ROIs and writes GeoJSON on the CPU, or plans
its grid. Only the predictions take turns, so two slides' batches never compete for the
device's memory and the device is not left idle during a slide's fixed CPU work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from wsi_pixelcam.tiling.patch_reader import READ_THREADS

CORES_PER_GPU_ENV = "WSI_PIXELCAM_CORES_PER_GPU"
"""Set in each local GPU worker (``batch.gpu_worker_envs``): the machine's CPU cores shared out
among its GPUs, which a worker that sees only its own GPU cannot work out."""

MAX_STREAM_READ_THREADS = 16
"""Enough to outrun an H200 (16 x ~500 patches/s); more would only hold more blocks in memory."""

_TURNS: dict[str, threading.Lock] = {}
_TURNS_GUARD = threading.Lock()


@contextmanager
def device_turn(device: str) -> Iterator[None]:
    """Hold ``device`` (e.g. "cuda:0", "cpu") for one slide's predictions in this process."""
    with _TURNS_GUARD:
        turn = _TURNS.setdefault(device, threading.Lock())
    with turn:
        yield


def stream_read_threads(device_type: str) -> int:
    """Threads cutting a slide's patches while it streams to ``device_type``.

    On a GPU, the cores of that GPU: only one slide predicts on it at a time, and a GPU
    outruns 2 reader threads several times over (a 224 px patch costs about 2 ms of CPU to
    cut; an H200 runs a ResNet-50 on 5,788 patches/s). At most MAX_STREAM_READ_THREADS, as
    each thread holds a block of pixels. On a CPU the model needs the cores.
    """
    if device_type != "cuda":
        return READ_THREADS
    shared_out = os.environ.get(CORES_PER_GPU_ENV)
    if shared_out is not None:
        cores = int(shared_out)
    else:
        import torch

        cores = len(os.sched_getaffinity(0)) // max(1, torch.cuda.device_count())
    return max(READ_THREADS, min(MAX_STREAM_READ_THREADS, cores))
