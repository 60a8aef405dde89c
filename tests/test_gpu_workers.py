"""One local dask worker per visible GPU, each seeing only its own; CPU machines unchanged.

The cluster test runs real dask workers on this CPU machine: a worker's GPU is an environment
variable it starts with, so pinning is checked without a GPU.
"""

from __future__ import annotations

import os

import pytest

from wsi_pixelcam.batch import dask_client, gpu_worker_envs, visible_gpus
from wsi_pixelcam.inference.device_turns import (
    CORES_PER_GPU_ENV,
    MAX_STREAM_READ_THREADS,
    stream_read_threads,
)
from wsi_pixelcam.tiling.patch_reader import READ_THREADS


def test_each_gpu_gets_one_worker_that_sees_only_it_and_its_share_of_cores() -> None:
    share = str(max(1, len(os.sched_getaffinity(0)) // 3))
    assert gpu_worker_envs(["0", "1", "3"]) == {
        "gpu0": {"CUDA_VISIBLE_DEVICES": "0", CORES_PER_GPU_ENV: share},
        "gpu1": {"CUDA_VISIBLE_DEVICES": "1", CORES_PER_GPU_ENV: share},
        "gpu2": {"CUDA_VISIBLE_DEVICES": "3", CORES_PER_GPU_ENV: share},
    }
    assert gpu_worker_envs([]) == {}


def test_a_slide_streamed_to_a_gpu_is_cut_by_its_cores_and_on_a_cpu_by_two(monkeypatch) -> None:
    monkeypatch.setenv(CORES_PER_GPU_ENV, "12")
    assert stream_read_threads("cuda") == 12
    assert stream_read_threads("cpu") == READ_THREADS == 2
    monkeypatch.setenv(CORES_PER_GPU_ENV, "1")  # never fewer than a CPU slide gets
    assert stream_read_threads("cuda") == READ_THREADS
    monkeypatch.setenv(CORES_PER_GPU_ENV, "96")  # nor more blocks in memory than pay
    assert stream_read_threads("cuda") == MAX_STREAM_READ_THREADS == 16


@pytest.mark.parametrize(
    ("listed", "gpus"),
    [
        ("0,1", ("0", "1")),
        (" 2, 5 ,", ("2", "5")),
        ("GPU-a1b2", ("GPU-a1b2",)),
        ("", ()),
        ("-1", ()),
    ],
)
def test_visible_gpus_follow_cuda_visible_devices(
    listed: str, gpus: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible_gpus() == gpus


def _seen() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def _cores_and_read_threads() -> tuple[str | None, int]:
    # the worker's share of cores, and the threads a slide streamed to its GPU is cut by
    return os.environ.get(CORES_PER_GPU_ENV), stream_read_threads("cuda")


def test_local_cluster_starts_one_pinned_worker_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with dask_client(None, workers=5) as client:
        seen = client.run(_seen)
        threads = client.nthreads()
        readers = client.run(_cores_and_read_threads)
    assert sorted(seen.values()) == ["0", "1"]  # 2 GPUs: 2 workers, not --workers 5
    half = max(1, len(os.sched_getaffinity(0)) // 2)  # each GPU's worker: half the cores
    assert list(readers.values()) == [(str(half), max(2, half))] * 2
    assert list(threads.values()) == [2, 2]  # a slide predicting, one finishing beside it


def test_without_gpus_the_cluster_has_the_workers_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with dask_client(None, workers=2) as client:
        seen = client.run(_seen)
        threads = client.nthreads()
    assert list(seen.values()) == ["", ""]
    assert list(threads.values()) == [1, 1]  # CPU workers: one slide each, cores shared out
