"""The batch runner's LocalCluster: math-library threads shared out between its workers."""

from __future__ import annotations

import os

from wsi_pixelcam.batch import dask_client, worker_thread_env


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
