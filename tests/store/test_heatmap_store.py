"""Heatmap zarr: exact accumulation across chunks, NaN-aware pyramid, NGFF attrs, completeness."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import zarr

from wsi_pixelcam.errors import StoreError
from wsi_pixelcam.store.heatmap_store import Block, HeatmapStore, open_heatmap


def _create(path, shape=(70, 90), chunk_px=16, **kw) -> HeatmapStore:
    return HeatmapStore.create(path, shape, 2.0, level0_per_px=8.0, chunk_px=chunk_px, **kw)


def _random_blocks(rng, shape, n, channels=1) -> list[Block]:
    blocks = []
    for _ in range(n):
        h, w = rng.integers(3, 30, 2)
        y0 = int(rng.integers(-10, shape[0]))
        x0 = int(rng.integers(-10, shape[1]))
        weight = rng.uniform(0.1, 1.0, (h, w)).astype(np.float32)
        values = rng.uniform(0, 1, (channels, h, w)).astype(np.float32)
        blocks.append(Block(y0, x0, values * weight, weight))
    return blocks


def _dense(blocks, shape, channels=1) -> np.ndarray:
    total = np.zeros((channels, shape[0] + 40, shape[1] + 40))
    weight = np.zeros((shape[0] + 40, shape[1] + 40))
    for b in blocks:  # brute force on a padded canvas, offset by 10 for negative starts
        h, w = b.weight.shape
        total[:, b.y0 + 10 : b.y0 + 10 + h, b.x0 + 10 : b.x0 + 10 + w] += b.weighted_sum
        weight[b.y0 + 10 : b.y0 + 10 + h, b.x0 + 10 : b.x0 + 10 + w] += b.weight
    total = total[:, 10 : 10 + shape[0], 10 : 10 + shape[1]]
    weight = weight[10 : 10 + shape[0], 10 : 10 + shape[1]]
    with np.errstate(invalid="ignore"):
        return np.where(weight > 0, total / weight, np.nan)


@pytest.mark.parametrize("channels", [1, 2])
def test_accumulation_matches_brute_force_across_chunks_and_batches(tmp_path, channels):
    rng = np.random.default_rng(channels)
    shape = (70, 90)
    store = _create(tmp_path / "h.zarr", shape, n_channels=channels)
    blocks = _random_blocks(rng, shape, 40, channels)
    store.add(blocks[:25])
    store.add(blocks[25:])  # a second batch adds to the same chunks
    path = store.finalize()
    level0 = open_heatmap(path).levels[0][...]
    expected = _dense(blocks, shape, channels)
    assert level0.shape == (channels, *shape) and level0.dtype == np.float32
    assert np.array_equal(np.isnan(level0), np.isnan(expected))
    assert np.nanmax(np.abs(level0 - expected)) < 1e-5
    assert np.isnan(level0).any()  # some pixels no block covered


def test_chunks_spilled_from_a_tiny_cache_come_back_exactly(tmp_path, monkeypatch):
    """With room for 2 cached chunks, blocks in random order evict, spill and reload chunks."""
    from wsi_pixelcam.store import heatmap_store

    monkeypatch.setattr(heatmap_store, "_CACHE_CHUNKS", 2)
    monkeypatch.setattr(heatmap_store, "_SPILLING", 1)
    rng = np.random.default_rng(7)
    shape = (70, 90)
    store = _create(tmp_path / "h.zarr", shape, n_channels=2)
    blocks = _random_blocks(rng, shape, 120, channels=2)
    for start in range(0, len(blocks), 5):
        store.add(blocks[start : start + 5])
    level0 = open_heatmap(store.finalize()).levels[0][...]
    expected = _dense(blocks, shape, channels=2)
    assert np.array_equal(np.isnan(level0), np.isnan(expected))
    assert np.nanmax(np.abs(level0 - expected)) < 1e-5


def test_pyramid_is_a_nan_aware_2x_mean_down_to_a_small_level(tmp_path):
    rng = np.random.default_rng(0)
    shape = (301, 555)  # odd sizes exercise the padded edges
    store = _create(tmp_path / "h.zarr", shape, chunk_px=64)
    blocks = _random_blocks(rng, shape, 300)
    store.add(blocks)
    heatmap = open_heatmap(store.finalize())
    shapes = [lvl.shape[1:] for lvl in heatmap.levels]
    assert shapes == [(301, 555), (151, 278), (76, 139)]
    for fine, coarse in zip(heatmap.levels, heatmap.levels[1:], strict=False):
        f = fine[0]
        padded = np.full((coarse.shape[1] * 2, coarse.shape[2] * 2), np.nan)
        padded[: f.shape[0], : f.shape[1]] = f
        blocks4 = padded.reshape(coarse.shape[1], 2, coarse.shape[2], 2).transpose(0, 2, 1, 3)
        blocks4 = blocks4.reshape(*coarse.shape[1:], 4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
            expected = np.nanmean(blocks4, axis=-1)
        got = coarse[0]
        assert np.isnan(expected).any() and not np.isnan(expected).all()
        assert np.array_equal(np.isnan(got), np.isnan(expected))
        assert np.nanmax(np.abs(got - expected)) < 1e-6


def test_attrs_ngff_metadata_and_atomic_rename(tmp_path):
    final = tmp_path / "slide.heatmap.zarr"
    store = _create(
        final,
        (600, 40),
        chunk_px=128,
        frame_offset_level0=(12, 34),
        provenance={"model": "pixelcam", "threshold": np.float32(0.5)},
    )
    assert not final.exists() and store.tmp_path.exists()
    store.add([Block(0, 0, np.ones((1, 4, 4), np.float32), np.ones((4, 4), np.float32))])
    assert store.finalize() == final
    assert not store.tmp_path.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        final.name
    ]
    meta = json.loads((final / "zarr.json").read_text())
    attrs = meta["attributes"]
    assert attrs["complete"] is True and attrs["mpp"] == 2.0 and attrs["level0_per_px"] == 8.0
    ome = attrs["ome"]
    assert ome["version"] == "0.5"
    multiscale = ome["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales == [[1.0, 2.0, 2.0], [1.0, 4.0, 4.0], [1.0, 8.0, 8.0]]
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1", "2"]
    heatmap = open_heatmap(final)
    assert heatmap.frame_offset_level0 == (12.0, 34.0)
    assert heatmap.provenance == {"model": "pixelcam", "threshold": 0.5}
    assert set(zarr.open_group(final, mode="r").keys()) == {"0", "1", "2"}  # accumulator gone
    plane = heatmap.plane(1)
    assert plane.shape == (300, 20) and plane[0:2, 0:2].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert np.isnan(plane[10:12, 10:12]).all()
    with pytest.raises(ValueError, match="level 3"):
        heatmap.plane(3)


def test_untouched_chunks_are_never_written(tmp_path):
    store = _create(tmp_path / "h.zarr", (1000, 1000), chunk_px=100)
    store.add([Block(150, 250, np.ones((1, 20, 20), np.float32), np.ones((20, 20), np.float32))])
    path = store.finalize()
    chunk_files = [p for p in (path / "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunk_files) == 1


def test_incomplete_foreign_and_existing_stores_are_refused(tmp_path):
    final = tmp_path / "h.zarr"
    store = _create(final)
    with pytest.raises(StoreError, match="incomplete"):
        open_heatmap(store.tmp_path)
    store.abort()
    assert not store.tmp_path.exists()

    with pytest.raises(StoreError, match="not a zarr"):
        open_heatmap(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(StoreError, match="not a wsi-pixelcam heatmap"):
        open_heatmap(tmp_path / "other.zarr")

    _create(final).finalize()
    with pytest.raises(StoreError, match="already exists"):
        _create(final)
    again = _create(final, overwrite=True)
    again.add([Block(0, 0, np.full((1, 2, 2), 0.25, np.float32), np.ones((2, 2), np.float32))])
    again.finalize()
    assert open_heatmap(final).levels[0][0, 0, 0] == 0.25
