"""The batch runner's LocalCluster: math-library threads shared out between its workers, and a
memory limit per worker so one runaway slide fails alone."""

from __future__ import annotations

import os
import time

import numpy as np

from wsi_pixelcam.batch import dask_client, run_batch, worker_thread_env
from wsi_pixelcam.jobs import SlideJob


def _thread_env() -> dict[str, str | None]:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return {name: os.environ.get(name) for name in names}


def test_worker_thread_env_splits_the_cores_between_workers():
    cores = len(os.sched_getaffinity(0))
    assert worker_thread_env(1)["OMP_NUM_THREADS"] == str(cores)
    assert worker_thread_env(cores)["OMP_NUM_THREADS"] == "1"
    assert worker_thread_env(cores * 4)["MKL_NUM_THREADS"] == "1"  # never zero


def test_local_workers_get_their_share_not_dasks_single_thread():
    with dask_client(None, 1) as client:
        seen = client.submit(_thread_env, pure=False).result()
    assert seen == worker_thread_env(1)


def _hog_or_pass(job: SlideJob) -> tuple[str, str, dict]:
    """The "hog" slide holds ~1.2 GB, far over its worker's limit; the others finish at once."""
    if job.slide_id == "hog":
        hog = np.ones(150_000_000)  # touched pages: resident at once
        time.sleep(30)
        return "ok", f"survived with {hog.nbytes} bytes", {}
    return "ok", "fine", {}


def test_a_slide_over_the_worker_memory_limit_fails_alone():
    """It used to grow its worker until the kernel killed the whole run (exit 137)."""
    jobs = [SlideJob("a.svs", "a"), SlideJob("hog.svs", "hog"), SlideJob("b.svs", "b")]
    outcomes = run_batch(_hog_or_pass, jobs, workers=1, memory_limit="600MiB")
    by_id = {o.slide_id: o for o in outcomes}
    assert by_id["a"].status == by_id["b"].status == "ok"
    hog = by_id["hog"]
    assert hog.status == "failed" and hog.error_class == "KilledWorker"
    assert hog.message.startswith("hog.svs: its worker process died 2 times")
    assert "memory limit" in hog.message and "\n" not in hog.message
