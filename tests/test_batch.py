"""The batch runner's LocalCluster: math-library threads shared out between its workers, glibc
malloc settings that keep buffers off fresh mmaps, and a memory limit per worker so one
runaway slide fails alone."""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np

from wsi_pixelcam.batch import WORKER_MALLOC_ENV, dask_client, run_batch, worker_thread_env
from wsi_pixelcam.jobs import SlideJob


def _worker_env() -> dict[str, str | None]:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", *WORKER_MALLOC_ENV)
    return {name: os.environ.get(name) for name in names}


def test_worker_thread_env_splits_the_cores_between_workers():
    cores = len(os.sched_getaffinity(0))
    assert worker_thread_env(1)["OMP_NUM_THREADS"] == str(cores)
    assert worker_thread_env(cores)["OMP_NUM_THREADS"] == "1"
    assert worker_thread_env(cores * 4)["MKL_NUM_THREADS"] == "1"  # never zero


def test_local_workers_get_their_share_not_dasks_single_thread_nor_its_malloc_trim():
    """dask's 64 KiB trim threshold made every buffer over 128 KiB a fresh mmap (tiling took
    1.4-1.6x as long); the workers start with ours instead, before their first malloc."""
    with dask_client(None, 1) as client:
        seen = client.submit(_worker_env, pure=False).result()
    assert seen == {**worker_thread_env(1), **WORKER_MALLOC_ENV}


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


def test_external_workers_take_the_malloc_settings_from_the_exported_dask_config(tmp_path):
    """What the README and the SLURM recipe export for workers started outside wsi-pixelcam
    (dask worker, dask-jobqueue): their nanny then starts them with our settings."""
    from distributed import Client

    scheduler_file = tmp_path / "scheduler.json"
    env = {
        **os.environ,
        "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": json.dumps(WORKER_MALLOC_ENV),
    }
    scheduler = subprocess.Popen(
        ["dask", "scheduler", "--scheduler-file", scheduler_file, "--port", "0",
         "--dashboard-address", ":0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = subprocess.Popen(
        ["dask", "worker", "--scheduler-file", scheduler_file, "--nthreads", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            seen = {
                name: client.submit(os.getenv, name, pure=False).result()
                for name in WORKER_MALLOC_ENV
            }
    finally:
        worker.terminate()
        scheduler.terminate()
        worker.wait(30)
        scheduler.wait(30)
    assert seen == WORKER_MALLOC_ENV
