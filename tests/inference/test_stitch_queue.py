"""Background stitching: the same heatmap as stitching inline, and errors reach the caller."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_pixelcam.inference.stitch import Stitcher
from wsi_pixelcam.inference.stitch_queue import StitchQueue
from wsi_pixelcam.store.heatmap_store import HeatmapStore, open_heatmap


def _stitcher(path) -> Stitcher:
    store = HeatmapStore.create(path, (40, 40), 2.0, level0_per_px=4.0, chunk_px=16, n_channels=2)
    return Stitcher(store, patch_level0_px=32)


def _batches(n_batches: int = 7, size: int = 3):
    rng = np.random.default_rng(0)
    for _ in range(n_batches):
        yield rng.uniform(0, 1, (size, 2, 4, 4)), rng.uniform(0, 120, (size, 2))


def test_queued_groups_give_the_inline_heatmap(tmp_path):
    inline = _stitcher(tmp_path / "inline.zarr")
    for maps, xy in _batches():
        inline.add(maps, xy)
    queued = _stitcher(tmp_path / "queued.zarr")
    with StitchQueue(queued, group_patches=5) as stitching:
        for maps, xy in _batches():
            stitching.put(maps, xy)
    assert queued.n_added == inline.n_added == 21
    assert stitching.busy_s > 0
    a = open_heatmap(inline.finish()).levels[0][...]
    b = open_heatmap(queued.finish()).levels[0][...]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # float32 sums in another grouping


def test_an_error_in_the_thread_reaches_the_caller(tmp_path):
    stitcher = _stitcher(tmp_path / "h.zarr")
    with pytest.raises(ValueError, match="NaN"), StitchQueue(stitcher, group_patches=1) as q:
        q.put(np.full((1, 2, 4, 4), np.nan), np.zeros((1, 2)))
        for maps, xy in _batches(50):  # keeps putting until the failure is seen
            q.put(maps, xy)


def test_a_failing_producer_stops_the_thread_without_adding_the_rest(tmp_path):
    stitcher = _stitcher(tmp_path / "h.zarr")
    with pytest.raises(KeyError), StitchQueue(stitcher, group_patches=100) as q:
        for maps, xy in _batches():
            q.put(maps, xy)
        raise KeyError("prediction failed")
    assert stitcher.n_added == 0  # the pending group was dropped, not stitched
