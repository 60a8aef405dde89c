"""tile_slide on real generated slides: exact grids, MPP sources, resampling, bad input."""

import json
import socket

import numpy as np
import pytest
import slidegen
import tifffile

from wsi_pixelcam.config import TileConfig
from wsi_pixelcam.errors import (
    MppError,
    NoTissueError,
    SlideReadError,
    StoreError,
    UnsupportedSlideError,
)
from wsi_pixelcam.labels import LabelSource
from wsi_pixelcam.slide import open_slide
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.tiling import tile_slide

CFG = TileConfig(target_mpp=0.5, patch_px=128)  # 256 level-0 px on a 0.25 um/px slide


def with_(**changes):
    """CFG with validated changes (model_copy would skip validation)."""
    return TileConfig.model_validate({**CFG.model_dump(), **changes})


def _xy(store):
    return {tuple(map(int, xy)) for xy in store.coords}


@pytest.mark.parametrize("name", ["svs", "generic", "ome", "flat"])
def test_exact_patch_grid_per_format(tmp_path, slides, layout, name):
    result = tile_slide(slides[name], CFG, tmp_path)
    store = open_patch_store(result.store_path)
    assert result.status == "ok" and result.n_bad_patches == 0
    assert _xy(store) == layout.expected_xy(256)
    assert store.patches.shape == (64, 128, 128, 3)
    assert np.all(store.tissue_frac == 1.0)
    meta = store.meta
    assert meta.mpp is not None and meta.mpp.value == pytest.approx(0.25)
    assert meta.tiling.resize_factor == pytest.approx(2.0)
    assert (tmp_path / f"{result.slide_id}.qc" / "tissue.geojson").exists()


def test_patch_pixels_are_the_slide_resampled_in_place(tmp_path, slides):
    cfg = with_(store={"compression": "lossless"})
    store = open_patch_store(tile_slide(slides["svs"], cfg, tmp_path).store_path)
    index = int(np.flatnonzero((store.coords == [1536, 1024]).all(axis=1))[0])
    got = store.patches[index].astype(float)
    errors = {}
    with open_slide(slides["svs"]) as reader:
        for shift in (-1, 0, 1):
            level0 = reader.read_region((1536 + shift, 1024), 0, (256, 256)).astype(float)
            errors[shift] = np.abs(got - level0.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))).mean()
    assert errors[0] < 2.0  # Lanczos vs a 2x2 box mean of the same decoded pixels
    assert errors[0] < 0.5 * min(errors[-1], errors[1])  # and not off by a level-0 pixel


def test_level_matching_target_is_read_without_resampling(tmp_path, slides, layout):
    cfg = TileConfig(target_mpp=1.0, patch_px=64)  # level 1 of the SVS is exactly 1.0 um/px
    store = open_patch_store(tile_slide(slides["svs"], cfg, tmp_path).store_path)
    assert store.meta.tiling.read_level == 1
    assert store.meta.tiling.resize_factor == 1.0
    assert _xy(store) == layout.expected_xy(256)


def test_overlapping_stride(tmp_path, slides):
    cfg = TileConfig(target_mpp=0.5, patch_px=128, stride_px=64, min_tissue_frac=1.0)
    store = open_patch_store(tile_slide(slides["svs"], cfg, tmp_path).store_path)
    assert len(store) == 15 * 15  # (2048 - 256) / 128 + 1 positions per axis


def test_both_backends_give_the_same_patches(tmp_path, slides):
    a = open_patch_store(
        tile_slide(slides["svs"], with_(backend="tiffslide"), tmp_path / "a").store_path
    )
    b = open_patch_store(
        tile_slide(slides["svs"], with_(backend="openslide"), tmp_path / "b").store_path
    )
    order_a, order_b = np.lexsort(a.coords.T), np.lexsort(b.coords.T)
    assert np.array_equal(a.coords[order_a], b.coords[order_b])
    diff = np.abs(a.patches[...][order_a].astype(int) - b.patches[...][order_b].astype(int))
    assert diff.mean() < 2.0


def test_rerun_skips_and_changed_params_refuse_without_overwrite(tmp_path, slides):
    first = tile_slide(slides["svs"], CFG, tmp_path)
    again = tile_slide(slides["svs"], CFG, tmp_path)
    assert (first.status, again.status) == ("ok", "skipped")
    changed = with_(min_tissue_frac=0.9)
    with pytest.raises(StoreError, match=r"min_tissue_frac differ.*--overwrite"):
        tile_slide(slides["svs"], changed, tmp_path)
    assert tile_slide(slides["svs"], changed, tmp_path, overwrite=True).status == "ok"


def test_a_run_that_gets_the_lock_after_another_finished_skips(tmp_path, slides, monkeypatch):
    """Both runs saw no store; the other one finished while this one waited for the lock."""
    from wsi_pixelcam.store.lock import StoreLock
    from wsi_pixelcam.tiling import tiler

    finished_first = []

    class LockTakenAfterAnotherRun(StoreLock):
        def __enter__(self):
            if not finished_first:
                monkeypatch.setattr(tiler, "StoreLock", StoreLock)
                finished_first.append(tile_slide(slides["svs"], CFG, tmp_path))
                monkeypatch.setattr(tiler, "StoreLock", LockTakenAfterAnotherRun)
            return super().__enter__()

    monkeypatch.setattr(tiler, "StoreLock", LockTakenAfterAnotherRun)
    late = tile_slide(slides["svs"], CFG, tmp_path)
    assert finished_first[0].status == "ok"
    assert late.status == "skipped" and late.n_patches == finished_first[0].n_patches


def test_qc_files_that_cannot_be_written_fail_the_slide_and_leave_nothing(
    tmp_path, slides, monkeypatch
):
    """The QC files are written beside the patches by a thread: its error still fails the
    slide, after the patches, and the half-built store goes with it."""
    from wsi_pixelcam.tiling import tiler

    def disk_full(qc_dir, *args, **kwargs):
        raise OSError(28, "No space left on device", str(qc_dir))

    monkeypatch.setattr(tiler, "stage_qc", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tile_slide(slides["svs"], CFG, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_interrupted_run_leaves_nothing_complete_and_rerun_finishes(tmp_path, slides):
    calls = []

    def explode(done, total):
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tile_slide(slides["svs"], CFG, tmp_path, progress=explode)
    assert calls and not (tmp_path / "svs_slide.zarr").exists()
    assert not list(tmp_path.glob("*.tmp-*")) and not list(tmp_path.glob("*.lock"))
    assert tile_slide(slides["svs"], CFG, tmp_path).status == "ok"


def test_rerun_after_kill_cleans_temporaries_and_stale_lock(tmp_path, slides):
    # what `kill -9` mid-run leaves: a half-written temp store, temp QC dir, a dead pid's lock
    (tmp_path / "svs_slide.zarr.tmp-deadbeef" / "patches").mkdir(parents=True)
    (tmp_path / "svs_slide.qc.tmp-deadbeef").mkdir()
    (tmp_path / "svs_slide.zarr.lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345})
    )
    assert tile_slide(slides["svs"], CFG, tmp_path).status == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svs_slide.qc", "svs_slide.zarr"]


def test_no_mpp_fails_naming_option_and_override_works(tmp_path, slides):
    with pytest.raises(MppError, match="--mpp"):
        tile_slide(slides["no_mpp"], CFG, tmp_path)
    result = tile_slide(slides["no_mpp"], CFG, tmp_path, mpp_override=0.25)
    assert result.mpp_source == "user override" and result.n_patches == 64


def test_blank_slide_has_no_tissue(tmp_path):
    blank = slidegen.tissue_image(1024, 1024, [])
    path = slidegen.write_svs(tmp_path / "blank.svs", blank, 0.25)
    with pytest.raises(NoTissueError, match=r"blank\.svs: no tissue found"):
        tile_slide(path, CFG, tmp_path / "out")


def test_truncated_tiff_fails_clearly(tmp_path, slides):
    data = slides["svs"].read_bytes()
    path = tmp_path / "truncated.svs"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises((UnsupportedSlideError, SlideReadError), match=r"truncated\.svs"):
        tile_slide(path, CFG, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.zarr"))


def _corrupt_level0_tiles(src, dst, tile_indices):
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        for index in tile_indices:
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            data[offset : offset + count] = b"\0" * count
    dst.write_bytes(bytes(data))
    return dst


def test_corrupt_tile_skips_only_its_patches(tmp_path, slides):
    # level-0 tiles are 256 px: tile (row 4, col 6) holds exactly the patch at (1536, 1024)
    path = _corrupt_level0_tiles(slides["svs"], tmp_path / "corrupt.svs", [4 * 16 + 6])
    cfg = with_(max_bad_patch_frac=0.1)
    result = tile_slide(path, cfg, tmp_path / "out")
    store = open_patch_store(result.store_path)
    assert result.n_bad_patches == 1 and len(store) == 63
    assert store.meta.tiling.bad_patch_xy_level0 == ((1536, 1024),)


def test_corrupt_region_above_threshold_fails_slide(tmp_path, slides):
    tiles = [r * 16 + c for r in range(2, 10) for c in range(4, 8)]  # half the tissue
    path = _corrupt_level0_tiles(slides["svs"], tmp_path / "bad.svs", tiles)
    with pytest.raises(SlideReadError, match=r"bad.svs: 32 of 64 patches could not be decoded"):
        tile_slide(path, CFG, tmp_path / "out")
    assert not (tmp_path / "out" / "bad.zarr").exists()


def test_cmu_slide_tiles_with_provenance(tmp_path, cmu_slide):
    result = tile_slide(cmu_slide, TileConfig(), tmp_path)
    store = open_patch_store(result.store_path)
    meta = store.meta
    assert meta.mpp is not None and meta.mpp.source.startswith("backend property")
    assert result.n_patches > 20 and meta.slide.content_hash and meta.versions["zarr"]
    assert store.has("thumbnail") and store.has("tissue_mask")
    assert np.all(store.tissue_frac >= 0.5) and len(store) == result.n_patches
    tissue = json.loads((tmp_path / "CMU-1-Small-Region.qc" / "tissue.geojson").read_text())
    assert tissue["features"] and tissue["features"][0]["properties"]["objectType"] == "annotation"


def test_labelled_store_serves_an_unlabelled_request(tmp_path, slides):
    labelled = LabelSource(slide_label="tumor")
    assert tile_slide(slides["svs"], CFG, tmp_path, labels=labelled).status == "ok"
    assert tile_slide(slides["svs"], CFG, tmp_path).status == "skipped"  # e.g. for infer
    with pytest.raises(StoreError, match="label_source differ"):
        tile_slide(slides["svs"], CFG, tmp_path, labels=LabelSource(slide_label="normal"))
