"""Stitching: patches cut from a known map stitch back to it, without seams, in bounded memory."""

from __future__ import annotations

import math
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from wsi_pixelcam.inference.stitch import Stitcher, overlay_png
from wsi_pixelcam.store.heatmap_store import HeatmapStore, open_heatmap

MPP0 = 0.25


def _field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth probability map over level-0 pixels."""
    return 0.5 + 0.4 * np.sin(x / 300.0) * np.cos(y / 400.0)


def _cut(xy: np.ndarray, patch0: int, map_px: int) -> np.ndarray:
    """Patch maps sampling the field at each map pixel's centre."""
    centres = (np.arange(map_px) + 0.5) * patch0 / map_px
    return np.stack([_field(x + centres[None, :], y + centres[:, None]) for x, y in xy])


def _grid(start: float, stop: float, stride: float) -> np.ndarray:
    starts = np.arange(start, stop, stride)
    return np.array([(x, y) for y in starts for x in starts], dtype=np.float64)


def _stitch(tmp_path, name, scale, patch0, xy, maps, window="cosine", extent0=2100):
    shape = (math.ceil(extent0 / scale),) * 2
    store = HeatmapStore.create(
        tmp_path / name, shape, MPP0 * scale, level0_per_px=scale, chunk_px=128
    )
    stitcher = Stitcher(store, patch_level0_px=patch0, window=window)
    for batch in range(0, len(xy), 16):  # several batches, each touching several chunks
        stitcher.add(maps[batch : batch + 16], xy[batch : batch + 16])
    return open_heatmap(stitcher.finish()).plane(0)[:, :]


@pytest.mark.parametrize(
    ("scale", "stride0", "map_px"),
    [(8.0, 128, 64), (5.3, 192, 16), (2.0, 256, 256), (3.0, 128, 8)],
    ids=["downsample", "fractional-upsample", "fine", "coarse-cam"],
)
def test_patches_cut_from_a_known_map_stitch_back_without_seams(tmp_path, scale, stride0, map_px):
    patch0 = 256
    xy = _grid(37.0, 2000 - patch0, stride0)  # offset: footprints start at fractional pixels
    heat = _stitch(tmp_path, "h.zarr", scale, patch0, xy, _cut(xy, patch0, map_px))
    px = np.arange(heat.shape[0])
    centres = (px + 0.5) * scale
    expected = _field(centres[None, :], centres[:, None])
    lo, hi = xy.min() / scale, (xy.max() + patch0) / scale  # covered span, heatmap px
    touched = (px + 1 > lo) & (px < hi)
    assert np.array_equal(~np.isnan(heat), touched[:, None] & touched[None, :])
    # near the coverage border a coarse map can only be extrapolated; inside it is exact
    margin = patch0 / map_px / scale + 1
    inner = (px > lo + margin) & (px + 1 < hi - margin)
    err = np.abs(heat - expected)
    assert np.nanmax(err) < 0.03
    assert err[np.ix_(inner, inner)].max() < 0.003
    # seams: the step between neighbouring pixels at patch borders is no larger than inside
    step = np.abs(np.diff(heat, axis=1))[np.ix_(inner, inner[:-1])]
    cols = px[:-1][inner[:-1]]
    borders = np.floor(np.concatenate([xy[:, 0], xy[:, 0] + patch0]) / scale)
    near_border = np.isin(cols, np.concatenate([borders - 1, borders]))
    assert near_border.any() and (~near_border).any()
    assert step[:, near_border].max() <= step[:, ~near_border].max() * 1.1 + 1e-4


@pytest.mark.parametrize(
    ("scale", "stride0", "map_px"), [(8.0, 128, 64), (5.3, 192, 16), (3.0, 128, 8)]
)
def test_chunks_finished_as_their_last_patch_arrives_give_the_same_heatmap(
    tmp_path, scale, stride0, map_px
):
    """With every patch announced, chunks are normalised while stitching (infer's way): the
    same heatmap at every level as finishing all at the end, whatever the patch order, with
    announced patches that never come (non-finite predictions) keeping their chunks open."""
    patch0 = 256
    xy = _grid(37.0, 2000 - patch0, stride0)
    maps = _cut(xy, patch0, map_px)
    order = np.random.default_rng(1).permutation(len(xy))
    kept = order[: len(order) - 3]  # three announced patches never arrive
    heatmaps = []
    for name, announce in (("all-at-end.zarr", False), ("as-they-come.zarr", True)):
        store = HeatmapStore.create(
            tmp_path / name,
            (math.ceil(2100 / scale),) * 2,
            MPP0 * scale,
            level0_per_px=scale,
            chunk_px=32,
        )
        stitcher = Stitcher(store, patch_level0_px=patch0)
        if announce:
            stitcher.expect(xy)
        for batch in range(0, len(kept), 7):
            rows = kept[batch : batch + 7]
            stitcher.add(maps[rows], xy[rows])
        written = [p for p in (store.tmp_path / "0").rglob("c/*/*/*") if p.is_file()]
        assert (len(written) > 0) == announce  # finished before finish() was called
        heatmaps.append(open_heatmap(stitcher.finish()))
    done, ref = heatmaps[1], heatmaps[0]
    assert len(done.levels) == len(ref.levels) >= 2
    for a, b in zip(done.levels, ref.levels, strict=True):
        assert np.array_equal(a[...], b[...], equal_nan=True)


def test_a_patch_reaching_a_finished_chunk_is_an_error_not_a_silent_loss(tmp_path):
    store = HeatmapStore.create(tmp_path / "h.zarr", (64, 64), 2.0, level0_per_px=8.0, chunk_px=16)
    stitcher = Stitcher(store, patch_level0_px=64)
    stitcher.expect(np.array([[0.0, 0.0]]))  # one patch announced for the top-left chunk
    stitcher.add(np.ones((1, 4, 4)), np.array([[0.0, 0.0]]))
    with pytest.raises(RuntimeError, match="after it was finished"):
        stitcher.add(np.ones((1, 4, 4)), np.array([[8.0, 8.0]]))  # unannounced, same chunk
    store.abort()


def test_constant_maps_stay_constant_under_irregular_overlap(tmp_path):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1600, (40, 2))
    maps = np.full((40, 32, 32), 0.7)
    heat = _stitch(tmp_path, "h.zarr", 6.7, 300, xy, maps)
    assert np.nanmax(np.abs(heat - 0.7)) < 1e-5  # normalised by summed weights, not counts


def test_windows_blend_disagreeing_patches_smoothly(tmp_path):
    rng = np.random.default_rng(1)
    xy = _grid(0, 1100, 128)
    maps = np.repeat(rng.uniform(0, 1, len(xy))[:, None, None], 32, axis=1)
    maps = np.repeat(maps, 32, axis=2)
    max_step = {}
    for window in ("flat", "cosine", "gaussian"):
        heat = _stitch(tmp_path, f"{window}.zarr", 4.0, 256, xy, maps, window, extent0=1400)
        steps = np.abs(np.diff(heat[20:-20, 20:-20], axis=1))
        max_step[window] = np.nanmax(steps)
    assert max_step["cosine"] < 0.5 * max_step["flat"]
    assert max_step["gaussian"] < 0.5 * max_step["flat"]


def test_fractional_placement_is_area_exact(tmp_path):
    # one 40 px patch at level-0 (13, 29), 8 level-0 px per heatmap px: the footprint spans
    # heatmap x in [1.625, 6.625); its right half (from x = 4.125) is 1, the left half 0.
    patch = np.zeros((1, 40, 40))
    patch[:, :, 20:] = 1.0
    store = HeatmapStore.create(tmp_path / "h.zarr", (12, 12), 2.0, level0_per_px=8.0, chunk_px=4)
    stitcher = Stitcher(store, patch_level0_px=40, window="flat")
    stitcher.add(patch, np.array([[13.0, 29.0]]))
    heat = open_heatmap(stitcher.finish()).plane(0)[:, :]
    covered = ~np.isnan(heat)
    assert covered.any(axis=1).nonzero()[0].tolist() == list(range(3, 9))
    assert covered.any(axis=0).nonzero()[0].tolist() == list(range(1, 7))
    col = np.arange(12)
    ones = np.clip(np.minimum(col + 1, 6.625) - np.maximum(col, 4.125), 0, None)
    cover = np.clip(np.minimum(col + 1, 6.625) - np.maximum(col, 1.625), 0, None)
    expected = ones[1:7] / cover[1:7]
    assert np.allclose(heat[5, 1:7], expected, atol=1e-6)
    assert heat[5, 4] == pytest.approx(0.875, abs=1e-6)


def test_multichannel_maps_and_input_checks(tmp_path):
    rng = np.random.default_rng(2)
    xy = _grid(0, 700, 100)
    p = rng.uniform(0, 1, (len(xy), 16, 16))
    maps = np.stack([p, 1 - p], axis=1)
    store = HeatmapStore.create(
        tmp_path / "h.zarr", (100, 100), 2.0, level0_per_px=8.0, n_channels=2
    )
    stitcher = Stitcher(store, patch_level0_px=128)
    stitcher.add(maps, xy)
    with pytest.raises(ValueError, match="channels"):
        stitcher.add(p, xy)
    with pytest.raises(ValueError, match="len"):
        stitcher.add(maps, xy[:3])
    with pytest.raises(ValueError, match="NaN"):
        stitcher.add(np.full_like(maps[:1], np.nan), xy[:1])
    level0 = open_heatmap(stitcher.finish()).levels[0][...]
    total = level0[0] + level0[1]
    assert np.nanmax(np.abs(total - 1)) < 1e-5 and not np.isnan(total).all()
    with pytest.raises(ValueError, match="window"):
        Stitcher(store, patch_level0_px=128, window="hann")  # type: ignore[arg-type]


def test_large_mostly_empty_slide_stitches_in_bounded_memory(tmp_path):
    # 200k x 200k level-0 px at 0.25 um/px, heatmap at 2 um/px: 25k x 25k (2.5 GB as float32)
    scale, patch0 = 8.0, 512
    shape = (25_000, 25_000)
    xy = (_grid(0, 20 * patch0, patch0 // 2) + 100_000)[:400]  # 400 overlapping, in one region
    maps = _cut(xy, patch0, 32).astype(np.float32)
    started = time.perf_counter()
    tracemalloc.start()
    try:
        store = HeatmapStore.create(tmp_path / "big.zarr", shape, 2.0, level0_per_px=scale)
        stitcher = Stitcher(store, patch_level0_px=patch0)
        for batch in range(0, len(xy), 64):
            stitcher.add(maps[batch : batch + 64], xy[batch : batch + 64])
        path = stitcher.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert time.perf_counter() - started < 20
    heatmap = open_heatmap(path)
    assert heatmap.levels[0].shape == (1, *shape) and len(heatmap.levels) == 8
    y, x = int(xy[0, 1] / scale) + 40, int(xy[0, 0] / scale) + 40
    region = heatmap.plane(0)[y - 2 : y + 2, x - 2 : x + 2]
    centres_x = (np.arange(x - 2, x + 2) + 0.5) * scale
    centres_y = (np.arange(y - 2, y + 2) + 0.5) * scale
    assert np.abs(region - _field(centres_x[None, :], centres_y[:, None])).max() < 0.01
    assert np.isnan(heatmap.plane(0)[0:10, 0:10]).all()


def test_overlay_png_blends_and_leaves_nan_transparent(tmp_path):
    thumb = np.full((40, 60, 3), 200, np.uint8)
    heat = np.full((20, 30), np.nan)
    heat[:, 15:] = 1.0
    path = overlay_png(thumb, heat, tmp_path / "overlay.png", alpha=0.5)
    image = np.asarray(Image.open(path))
    assert image.shape == (40, 60, 3)
    assert (image[:, :30] == 200).all()  # NaN: thumbnail shows through
    assert image[:, 30:, 0].min() > image[:, 30:, 2].max()  # high probability is red
    same = overlay_png(thumb, heat, tmp_path / "none.png", alpha=0.0)
    assert (np.asarray(Image.open(same)) == thumb).all()


def test_stitch_module_does_not_import_torch():
    code = "import sys, wsi_pixelcam.inference.stitch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
