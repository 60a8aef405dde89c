"""Run a per-slide function over many slides on dask.distributed.

Only paths and small summaries cross process boundaries: each task opens its own slide.
A task never raises: it returns a :class:`SlideOutcome` with the error class and message,
so one bad slide cannot kill the batch. A worker that dies (a backend crashing in C code, or
dask's nanny stopping it over its memory limit) is recorded as a failure of that slide too;
the store lock it held names a dead process, which the next run takes over.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import shutil
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wsi_pixelcam.atomic_write import replaced_when_done
from wsi_pixelcam.errors import OutputError, WsiPixelcamError
from wsi_pixelcam.inference.device_turns import CORES_PER_GPU_ENV
from wsi_pixelcam.jobs import PROGRESS_TOPIC, SlideJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideOutcome:
    """What happened to one slide: ok, skipped or failed (with error class and message)."""

    slide_id: str
    path: str
    status: str
    seconds: float
    error_class: str = ""
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    traceback: str = ""


SlideFn = Callable[[SlideJob], tuple[str, str, dict[str, Any]]]
"""A per-slide function returning (status, message, small details); raises on failure."""


def run_guarded(fn: SlideFn, job: SlideJob) -> SlideOutcome:
    """Call ``fn`` and turn any exception into a failed outcome (runs inside the worker)."""
    started = time.perf_counter()
    try:
        status, message, details = fn(job)
    except Exception as exc:
        # our errors carry a user-facing message; anything else is a bug or a backend
        # surprise, so its traceback is kept for --debug
        ours = isinstance(exc, WsiPixelcamError)
        return SlideOutcome(
            job.slide_id,
            job.path,
            "failed",
            time.perf_counter() - started,
            type(exc).__name__,
            str(exc) if ours else f"{job.path}: {exc}",
            traceback="" if ours else traceback.format_exc(),
        )
    return SlideOutcome(
        job.slide_id,
        job.path,
        status,
        time.perf_counter() - started,
        message=message,
        details=details,
    )


def worker_thread_env(workers: int) -> dict[str, str]:
    """Math-library threads per local worker: the machine's cores shared between workers.

    dask starts workers with one OpenMP/BLAS thread each (it expects many workers of one
    thread), which would leave torch on one core per slide; a slide's model runs better on
    its share of all cores.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = str(max(1, (cores or 1) // max(1, workers)))
    return {
        name: threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else nvidia-smi's.

    Asked without torch, so a tiling client stays light; no nvidia-smi means no GPU.
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        if shutil.which("nvidia-smi") is None:
            return ()
        query = ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"]
        try:
            listed = subprocess.run(query, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ()
        listed = listed.replace("\n", ",")
    gpus = tuple(g.strip() for g in listed.split(",") if g.strip())
    return () if gpus[:1] == ("-1",) else gpus  # "-1" is CUDA's "no device"


def gpu_worker_envs(gpus: Sequence[str]) -> dict[str, dict[str, str]]:
    """One local worker per GPU: worker name -> the environment pinning it to its GPU (as its
    only visible device, so ``cuda`` in the worker is that GPU) and telling it its share of
    the machine's CPU cores (for the threads that cut a streamed slide's patches)."""
    cores = str(max(1, len(os.sched_getaffinity(0)) // max(1, len(gpus))))
    return {
        f"gpu{i}": {"CUDA_VISIBLE_DEVICES": gpu, CORES_PER_GPU_ENV: cores}
        for i, gpu in enumerate(gpus)
    }


WORKER_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(16 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(32 * 2**20),
}
"""glibc malloc settings for local workers, replacing dask's default trim threshold of 64 KiB.

dask sets that threshold so workers hand freed memory back to the OS at once; glibc then also
stops raising its mmap threshold, so every buffer over 128 KiB (a decoded tile, a patch, a
block of patches) is a fresh mmap whose pages the kernel zeroes. Tiling a slide on such a
worker took 1.4-1.6x the time it takes in a plain process. Here buffers up to 16 MiB come from
the heap and an arena keeps up to 32 MiB free before trimming; dask's memory limit still
applies. Set before the worker process starts, as glibc reads them only then."""

SLIDES_PER_GPU = 2
"""Slides a GPU worker holds at once: one predicting, one finishing on the CPU."""

WORKER_DEATHS_ALLOWED = 1
"""Times a slide may take its worker down before it fails: once may be a neighbour's fault
(the OOM killer picks any process), twice is the slide's."""


@contextmanager
def dask_client(
    scheduler: str | None, workers: int, memory_limit: str | int = "auto"
) -> Iterator[Any]:
    """A client on ``scheduler`` (an address or a scheduler file) or on a new LocalCluster:
    of ``workers`` processes, or on a GPU machine of one process per visible GPU.

    Local workers get dask's ``memory_limit`` ("auto": the machine's memory shared out), so a
    slide that runs away is stopped by dask's nanny and fails alone, instead of growing until
    the kernel kills the run.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        kwargs = (
            {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
        )
        with Client(**kwargs) as client:
            yield client
        return
    gpus = visible_gpus()
    with (
        dask.config.set(
            {
                "distributed.scheduler.allowed-failures": WORKER_DEATHS_ALLOWED,
                # one slide per worker thread at a time: a worker's death then counts against
                # the slide it was running, not one queued behind it
                "distributed.scheduler.worker-saturation": 1.0,
                **{
                    f"distributed.nanny.pre-spawn-environ.{k}": v
                    for k, v in WORKER_MALLOC_ENV.items()
                },
            }
        ),
        LocalCluster(
            n_workers=0 if gpus else workers,  # GPU workers are added below, one per GPU
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            memory_limit=memory_limit,
            silence_logs=logging.ERROR,
            env=worker_thread_env(len(gpus) or workers),
        ) as cluster,
        Client(cluster) as client,
    ):
        if gpus:
            _start_gpu_workers(cluster, client, gpus)
        yield client


def _start_gpu_workers(cluster: Any, client: Any, gpus: Sequence[str]) -> None:
    """Start the cluster's workers from its own worker spec, each with its GPU's environment
    and SLIDES_PER_GPU threads (the slides take turns on the device: see
    :mod:`wsi_pixelcam.inference.device_turns`)."""
    for name, env in gpu_worker_envs(gpus).items():
        spec = copy.deepcopy(cluster.new_spec)
        spec["options"]["env"] = {**spec["options"].get("env", {}), **env}
        spec["options"]["nthreads"] = SLIDES_PER_GPU
        cluster.worker_spec[name] = spec
    cluster.scale(len(gpus))
    client.wait_for_workers(len(gpus))


@dataclass
class BatchProgress:
    """Callbacks the CLI uses to draw progress; the library never prints."""

    on_outcome: Callable[[SlideOutcome], None] = lambda outcome: None
    on_patches: Callable[[str, int, int], None] = lambda slide_id, done, total: None


def run_batch(
    fn: SlideFn,
    jobs: Sequence[SlideJob],
    *,
    scheduler: str | None = None,
    workers: int = 2,
    progress: BatchProgress | None = None,
    memory_limit: str | int = "auto",
) -> list[SlideOutcome]:
    """Run ``fn`` over ``jobs``, one dask task per slide, and return outcomes in job order.

    ``memory_limit`` is per local worker (dask's notation: bytes, "4GiB", "auto").
    """
    from distributed import KilledWorker, as_completed

    progress = progress or BatchProgress()
    if not jobs:
        return []
    outcomes: dict[str, SlideOutcome] = {}
    lock = threading.Lock()
    with dask_client(scheduler, max(1, min(workers, len(jobs))), memory_limit) as client:

        def on_event(event: Any) -> None:
            _, msg = event
            with lock:
                progress.on_patches(msg["slide_id"], msg["done"], msg["total"])

        client.subscribe_topic(PROGRESS_TOPIC, on_event)
        futures = {
            client.submit(run_guarded, fn, job, key=f"slide-{i}-{job.slide_id}", retries=0): job
            for i, job in enumerate(jobs)
        }
        for future in as_completed(futures):
            job = futures[future]
            try:
                outcome = future.result()
            except KilledWorker:
                outcome = SlideOutcome(
                    job.slide_id,
                    job.path,
                    "failed",
                    0.0,
                    "KilledWorker",
                    f"{job.path}: its worker process died {WORKER_DEATHS_ALLOWED + 1} times "
                    "while processing it (over the worker memory limit, or a crash in a slide "
                    "backend); the slide was skipped, the others went on",
                )
            except Exception as exc:  # the scheduler or connection failed for this task
                outcome = SlideOutcome(
                    job.slide_id,
                    job.path,
                    "failed",
                    0.0,
                    type(exc).__name__,
                    f"{job.path}: worker died while processing it ({exc})",
                )
            outcomes[job.slide_id] = outcome
            with lock:
                progress.on_outcome(outcome)
        client.unsubscribe_topic(PROGRESS_TOPIC)
    return [outcomes[job.slide_id] for job in jobs]


STATUS_COLUMNS = ("slide_id", "path", "status", "error_class", "message", "seconds")


def write_status_table(out_dir: Path, name: str, outcomes: Sequence[SlideOutcome]) -> Path:
    """``<name>_status.csv``, one row per slide, and a JSON twin with details; atomic writes."""
    csv_path = out_dir / f"{name}_status.csv"
    json_path = out_dir / f"{name}_status.json"
    try:
        with replaced_when_done(csv_path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*STATUS_COLUMNS, "details"])
            for o in outcomes:
                writer.writerow(
                    [
                        o.slide_id,
                        o.path,
                        o.status,
                        o.error_class,
                        o.message,
                        f"{o.seconds:.2f}",
                        json.dumps(o.details, sort_keys=True),
                    ]
                )
        with replaced_when_done(json_path) as tmp:
            tmp.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    except OSError as exc:
        raise OutputError(
            f"{out_dir}: cannot write the status table ({exc.strerror or exc})"
        ) from exc
    return csv_path
