"""``infer_slide`` end to end on generated slides with tiny real models whose outputs are known.

The test slide (conftest ``layout``) is 4096 x 3072 level-0 px at 0.25 um/px with tissue exactly
in the box (1024, 512)-(3072, 2560); 128 px patches at 0.5 um/px tile it as 8 x 8 footprints
of 256 level-0 px. A model predicting a constant foreground probability ``fg`` therefore gives
a heatmap of ``fg`` exactly over that box and NaN elsewhere, and one ROI equal to the box.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import errno
import json
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
import tiny_pixelcam as tiny
import torch
import zarr
from PIL import Image
from shapely.geometry import shape
from storegen import make_store

from wsi_pixelcam.config import InferConfig, TileConfig, load_config
from wsi_pixelcam.errors import (
    CheckpointError,
    ConfigError,
    ModelError,
    OutputError,
    StoreError,
    TilingMismatchError,
)
from wsi_pixelcam.geo.qupath_rules import validate_geojson_file
from wsi_pixelcam.inference import outputs
from wsi_pixelcam.inference.infer import infer_slide
from wsi_pixelcam.inference.predict import InferenceModel
from wsi_pixelcam.inference.settings import tile_config
from wsi_pixelcam.jobs import SlideJob, infer_job
from wsi_pixelcam.store.heatmap_store import open_heatmap
from wsi_pixelcam.tiling import tile_slide

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FG = 0.8
CLASS_PROBS = (0.3, 0.7)
NO_OVERLAP = {"stride_px": tiny.PATCH_PX}


def _model(fg: float = FG, **meta_changes) -> InferenceModel:
    return InferenceModel(tiny.constant_model(fg, CLASS_PROBS), tiny.meta(**meta_changes), "tiny")


def _cfg(**changes) -> InferConfig:
    return InferConfig(**{"num_workers": 0, "batch_size": 32, "min_area_um2": 0.0, **changes})


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".tmp-" in p.name or p.suffix == ".lock")


@pytest.fixture(scope="module")
def store_path(slides, tmp_path_factory) -> Path:
    cfg = TileConfig(target_mpp=tiny.MPP, patch_px=tiny.PATCH_PX)
    return Path(tile_slide(slides["svs"], cfg, tmp_path_factory.mktemp("stores")).store_path)


@pytest.fixture(scope="module")
def inferred(slides, tmp_path_factory):
    """One full run from the slide file, tiles and teacher CAM included, on a grid without
    overlap (its patch counts and class-probability pixels are one per patch)."""
    out = tmp_path_factory.mktemp("out")
    cfg = _cfg(threshold=0.5, teacher_cam=True, tile=NO_OVERLAP)
    result = infer_slide(slides["svs"], _model(), cfg, out)
    return out, result


def test_slide_end_to_end_gives_the_tissue_box_as_one_roi(inferred, layout):
    out, result = inferred
    slide_dir = out / "svs_slide"
    assert result.status == "ok" and result.out_dir == str(slide_dir)
    assert result.n_patches == 64 and result.n_rois == 1
    assert sorted(p.name for p in slide_dir.iterdir()) == [
        "class_probs.zarr", "heatmap.zarr", "overlay.png", "qc", "rois.geojson", "summary.json",
        "tiles.geojson",
    ]  # fmt: skip
    assert not (out / "stores").exists()  # streamed from the slide: no patch store
    assert sorted(p.name for p in (slide_dir / "qc").iterdir()) == [
        "thumbnail.png", "tissue.geojson", "tissue_mask.png", "tissue_overlay.png",
    ]  # fmt: skip
    assert _leftovers(out) == []
    validate_geojson_file(slide_dir / "rois.geojson")
    (roi,) = json.loads((slide_dir / "rois.geojson").read_text())["features"]
    x0, y0, x1, y1 = layout.box
    box_um2 = (x1 - x0) * (y1 - y0) * layout.mpp**2
    geom = shape(roi["geometry"])
    assert geom.equals(shapely.box(x0, y0, x1, y1))
    props = roi["properties"]
    assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert props["measurements"]["area_um2"] == pytest.approx(box_um2)
    assert props["measurements"]["mean_prob"] == pytest.approx(FG, abs=1e-5)
    assert props["measurements"]["max_prob"] == pytest.approx(FG, abs=1e-5)
    assert props["metadata"]["threshold"] == "0.5" and props["metadata"]["mpp"] == "2"
    assert props["metadata"]["model"] == "tiny" and props["metadata"]["frame"].startswith("qupath")
    assert result.roi_area_um2 == pytest.approx(box_um2)


def test_heatmap_covers_the_tissue_with_every_channel(inferred, layout):
    out, _ = inferred
    heatmap = open_heatmap(out / "svs_slide" / "heatmap.zarr")
    assert heatmap.mpp == 2.0 and heatmap.level0_per_px == 8.0
    assert heatmap.provenance["channels"] == ["foreground", "cam:Tumor"]
    fg = heatmap.plane(0, 0)[:, :]
    assert fg.shape == (layout.height // 8, layout.width // 8)
    x0, y0, x1, y1 = (v // 8 for v in layout.box)
    covered = np.zeros(fg.shape, bool)
    covered[y0:y1, x0:x1] = True
    assert np.array_equal(~np.isnan(fg), covered)  # no tissue, no patch: NaN
    np.testing.assert_allclose(fg[covered], FG, atol=1e-5)
    # the teacher CAM of a zero-weight classifier is constant, which min-max makes 0
    assert np.array_equal(heatmap.plane(0, 1)[:, :][covered], np.zeros(covered.sum()))
    # class probabilities: one pixel per 256 level-0 px patch
    classes = open_heatmap(out / "svs_slide" / "class_probs.zarr")
    assert classes.provenance["channels"] == ["prob:normal", "prob:Tumor"]
    assert classes.level0_per_px == 256 and classes.mpp == 64.0
    x0, y0, x1, y1 = (v // 256 for v in layout.box)
    for channel, p in enumerate(CLASS_PROBS):
        plane = classes.plane(0, channel)[:, :]
        assert plane.shape == (layout.height // 256, layout.width // 256)
        np.testing.assert_allclose(plane[y0:y1, x0:x1], p, atol=1e-6)
        assert np.isnan(plane).sum() == plane.size - (y1 - y0) * (x1 - x0)
    assert len(heatmap.levels) >= 2  # multiscale


def test_summary_tiles_and_overlay(inferred, slides):
    out, result = inferred
    slide_dir = out / "svs_slide"
    summary = json.loads((slide_dir / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["prediction"]["class_probs"] == pytest.approx(
        {"normal": CLASS_PROBS[0], "Tumor": CLASS_PROBS[1]}, abs=1e-5
    )
    assert summary["prediction"]["predicted_class"] == "Tumor" == result.predicted_class
    assert "tissue fraction" in summary["prediction"]["rule"]
    assert summary["rois"]["count"] == 1 and summary["rois"]["threshold_source"] == "config"
    assert set(summary["timings_s"]) >= {"tile", "predict", "stitch_busy", "rois", "total"}
    assert summary["source"]["store"] is None and summary["files"]["qc"] == "qc"
    assert summary["source"]["streamed_from"] == str(slides["svs"])
    assert summary["source"]["n_patches"] == 64 and summary["source"]["n_unreadable_patches"] == 0
    identity = summary["params"]["store"]  # the slide and its grid, not a store
    assert identity["slide"] == str(slides["svs"].resolve()) and len(identity["content_hash"]) == 64
    assert identity["grid"]["stride_px"] == tiny.PATCH_PX
    validate_geojson_file(slide_dir / "tiles.geojson")
    tiles = json.loads((slide_dir / "tiles.geojson").read_text())["features"]
    assert len(tiles) == 64
    assert {t["properties"]["objectType"] for t in tiles} == {"tile"}
    assert {t["properties"]["classification"]["name"] for t in tiles} == {"Tumor"}
    first = tiles[0]["properties"]["measurements"]
    assert first["prob"] == pytest.approx(CLASS_PROBS[1], abs=1e-5)
    assert first["fg_mean"] == pytest.approx(FG, abs=1e-5)
    assert shape(tiles[0]["geometry"]).area == 256 * 256
    thumb = np.asarray(Image.open(slide_dir / "qc" / "thumbnail.png"))
    overlay = np.asarray(Image.open(slide_dir / "overlay.png"))
    assert overlay.shape == thumb.shape
    assert not np.array_equal(overlay, thumb)  # the heatmap is drawn on the tissue


def test_rerun_skips_refuses_changed_parameters_and_overwrites(inferred, slides):
    out, _ = inferred
    again = infer_slide(
        slides["svs"], _model(), _cfg(tile=NO_OVERLAP, threshold=0.5, teacher_cam=True), out
    )
    assert again.status == "skipped" and again.n_rois == 1
    with pytest.raises(OutputError, match="threshold differ"):
        infer_slide(
            slides["svs"], _model(), _cfg(tile=NO_OVERLAP, threshold=0.6, teacher_cam=True), out
        )
    with pytest.raises(OutputError, match="model_fingerprint"):
        infer_slide(
            slides["svs"],
            _model(fg=0.7),
            _cfg(tile=NO_OVERLAP, threshold=0.5, teacher_cam=True),
            out,
        )
    replaced = infer_slide(
        slides["svs"], _model(), _cfg(tile=NO_OVERLAP, threshold=0.9), out, overwrite=True
    )
    assert replaced.status == "ok" and replaced.n_rois == 0 and _leftovers(out) == []


def test_a_run_that_gets_the_lock_after_another_finished_skips(store_path, tmp_path, monkeypatch):
    """Both runs saw no outputs; the other one finished while this one waited for the lock."""
    from wsi_pixelcam.inference import infer as infer_module
    from wsi_pixelcam.store.lock import StoreLock

    cfg = _cfg(threshold=0.5, write_tiles=False)
    finished_first = []

    class LockTakenAfterAnotherRun(StoreLock):
        def __enter__(self):
            if not finished_first:
                monkeypatch.setattr(infer_module, "StoreLock", StoreLock)
                finished_first.append(infer_slide(store_path, _model(), cfg, tmp_path))
                monkeypatch.setattr(infer_module, "StoreLock", LockTakenAfterAnotherRun)
            return super().__enter__()

    monkeypatch.setattr(infer_module, "StoreLock", LockTakenAfterAnotherRun)
    late = infer_slide(store_path, _model(), cfg, tmp_path)
    assert finished_first[0].status == "ok"
    assert late.status == "skipped" and late.n_rois == finished_first[0].n_rois == 1


def test_no_foreground_writes_an_empty_valid_collection(store_path, tmp_path):
    cfg = _cfg(threshold=0.5, write_tiles=False)
    result = infer_slide(store_path, _model(fg=0.2), cfg, tmp_path)
    slide_dir = tmp_path / "svs_slide"
    assert result.status == "ok" and result.n_rois == 0
    assert "no foreground" in result.message
    rois = json.loads((slide_dir / "rois.geojson").read_text())
    assert rois == {"type": "FeatureCollection", "features": []}
    validate_geojson_file(slide_dir / "rois.geojson")
    summary = json.loads((slide_dir / "summary.json").read_text())
    assert summary["rois"]["count"] == 0 and "no foreground" in summary["message"]
    assert summary["files"]["tiles"] is None and not (slide_dir / "tiles.geojson").exists()


def test_threshold_defaults_to_the_checkpoint_tau_then_half(store_path, tmp_path):
    with_tau = _model(fg=0.6, val_metrics={"best_tau": 0.65, "pxap": 70.0})
    result = infer_slide(store_path, with_tau, _cfg(), tmp_path / "a")
    assert result.threshold == 0.65 and result.n_rois == 0
    result = infer_slide(store_path, _model(fg=0.6), _cfg(), tmp_path / "b")
    assert result.threshold == 0.5 and result.n_rois == 1
    with pytest.raises(CheckpointError, match="best_tau=65"):
        infer_slide(store_path, _model(val_metrics={"best_tau": 65.0}), _cfg(), tmp_path / "c")


def test_bad_config_values_are_refused(store_path, tmp_path):
    with pytest.raises(ConfigError, match="threshold"):
        load_config(InferConfig, overrides={"threshold": 1.5})
    with pytest.raises(ConfigError, match="threshold"):
        load_config(InferConfig, overrides={"threshold": -0.1})
    with pytest.raises(ConfigError, match="roi_class 'Stroma'"):
        infer_slide(store_path, _model(), _cfg(roi_class="Stroma"), tmp_path)
    with pytest.raises(ConfigError, match=r"output_mpp 0\.25 is finer"):
        infer_slide(store_path, _model(), _cfg(output_mpp=0.25), tmp_path)
    with pytest.raises(ConfigError, match=r"tile\.patch_px=256"):
        infer_slide(Path("any.svs"), _model(), _cfg(tile={"patch_px": 256}), tmp_path)


def test_shipped_config_loads_with_the_defaults():
    assert load_config(InferConfig, CONFIGS / "infer.yaml") == InferConfig()


def test_slide_files_are_tiled_with_half_overlap_unless_a_stride_is_set():
    shipped = load_config(InferConfig, CONFIGS / "infer.yaml")
    for cfg in (_cfg(), shipped):
        assert tile_config(cfg, tiny.meta()).stride == tiny.PATCH_PX // 2
    explicit = _cfg(tile=NO_OVERLAP)
    assert tile_config(explicit, tiny.meta()).stride == tiny.PATCH_PX


def test_a_streamed_slide_is_cut_by_two_threads_on_a_cpu_unless_told(slides, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="wsi_pixelcam.inference.infer")
    for out, tile in (("a", NO_OVERLAP), ("b", {**NO_OVERLAP, "read_threads": 3})):
        infer_slide(slides["svs"], _model(), _cfg(threshold=0.5, tile=tile), tmp_path / out)
    said = [r.getMessage() for r in caplog.records if "patches cut by" in r.getMessage()]
    assert [m.rsplit("cut by ", 1)[1] for m in said] == ["2 threads", "3 threads"]


def test_frame_offset_moves_rois_and_tiles_into_qupaths_frame(store_path, tmp_path, layout):
    moved = tmp_path / "moved.zarr"
    shutil.copytree(store_path, moved)
    group = zarr.open_group(moved, mode="r+")
    slide_attrs = dict(group.attrs["slide"])
    slide_attrs["bounds_offset"] = [100, 40]
    group.attrs["slide"] = slide_attrs
    cfg = _cfg(threshold=0.5)
    infer_slide(moved, _model(), cfg, tmp_path / "q")
    infer_slide(moved, _model(), cfg.model_copy(update={"frame": "level0"}), tmp_path / "l")
    x0, y0, x1, y1 = layout.box
    for frame, (dx, dy) in (("q", (100, 40)), ("l", (0, 0))):
        slide_dir = tmp_path / frame / "svs_slide"  # the id recorded in the store
        (roi,) = json.loads((slide_dir / "rois.geojson").read_text())["features"]
        assert shape(roi["geometry"]).equals(shapely.box(x0 - dx, y0 - dy, x1 - dx, y1 - dy))
        tiles = json.loads((slide_dir / "tiles.geojson").read_text())["features"]
        assert min(shape(t["geometry"]).bounds[0] for t in tiles) == x0 - dx


def test_all_nan_predictions_fail_and_leave_nothing(store_path, tmp_path):
    model = _model()
    with torch.no_grad():
        model.network.classifier.bias.fill_(float("nan"))
    with pytest.raises(ModelError, match="NaN or infinity for all 64 patches"):
        infer_slide(store_path, model, _cfg(), tmp_path)
    assert not (tmp_path / "svs_slide").exists() and _leftovers(tmp_path) == []


def test_disk_full_while_writing_leaves_nothing_marked_complete(store_path, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "write_overlay", full)
    with pytest.raises(OutputError, match="No space left on device"):
        infer_slide(store_path, _model(), _cfg(), tmp_path)
    assert not (tmp_path / "svs_slide").exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert infer_slide(store_path, _model(), _cfg(), tmp_path).status == "ok"  # a rerun completes


def test_unusable_inputs_fail_clearly(store_path, tmp_path):
    unfinished = tmp_path / "half.zarr"
    shutil.copytree(store_path, unfinished)
    zarr.open_group(unfinished, mode="r+").attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete"):
        infer_slide(unfinished, _model(), _cfg(), tmp_path / "out")
    with pytest.raises(StoreError, match="no such patch store"):
        infer_slide(tmp_path / "missing.zarr", _model(), _cfg(), tmp_path / "out")
    with pytest.raises(TilingMismatchError, match="the model expects 64 px"):
        infer_slide(store_path, _model(patch_px=64), _cfg(), tmp_path / "out")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="cannot create output directory"):
        infer_slide(store_path, _model(), _cfg(), blocker / "out")


def test_store_written_from_images_infers_like_a_slide(tmp_path):
    """A WSOL-dataset store at the model's mpp and patch size gets every output (it used to
    fail with KeyError: 'mpp'): its images sit side by side on a virtual slide."""
    store = make_store(tmp_path / "glas.zarr", n=3, patch_px=tiny.PATCH_PX, mpp=tiny.MPP)
    result = infer_slide(store, _model(), _cfg(threshold=0.5, output_mpp=4.0), tmp_path / "out")
    assert result.status == "ok" and result.n_patches == 3 and result.n_rois == 1
    heatmap = open_heatmap(tmp_path / "out" / "glas" / "heatmap.zarr")
    width = 3 * tiny.PATCH_PX * tiny.MPP / 4.0  # three patches of 64 um at 4 um/px
    assert heatmap.levels[0].shape[1:] == (16, width)
    assert np.nanmin(heatmap.plane(0, 0)[:, :]) == pytest.approx(FG, abs=1e-3)


def test_store_of_unknown_resolution_is_one_clear_error(tmp_path):
    """It used to fail with TypeError: float() ... NoneType."""
    store = make_store(tmp_path / "u.zarr", n=2, patch_px=tiny.PATCH_PX, mpp=None)
    with pytest.raises(TilingMismatchError, match=r"u.zarr: patches are at unknown um/px"):
        infer_slide(store, _model(), _cfg(), tmp_path / "out")
    with pytest.raises(StoreError, match=r"u.zarr: .* does not know its resolution"):
        infer_slide(store, _model(mpp=float("nan")), _cfg(), tmp_path / "out")


def test_infer_job_loads_the_checkpoint_in_the_worker(store_path, tmp_path):
    checkpoint = tiny.save(tmp_path / "m.pt", tiny.constant_model(FG, CLASS_PROBS))
    job = SlideJob(str(store_path), "svs_slide")
    status, message, details = infer_job(
        job, cfg=_cfg(threshold=0.5), model_path=str(checkpoint), out_dir=str(tmp_path / "out")
    )
    assert status == "ok" and "1 ROI" in message
    assert details["n_rois"] == 1 and details["predicted_class"] == "Tumor"
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        infer_job(job, cfg=_cfg(), model_path=str(tmp_path / "nope.pt"), out_dir=str(tmp_path))


def _features_without_ids(path: Path) -> list[dict]:
    features = json.loads(path.read_text())["features"]
    return [{k: v for k, v in feature.items() if k != "id"} for feature in features]


def test_streaming_equals_a_lossless_store_on_the_same_grid(slides, tmp_path):
    """Streaming never JPEG-encodes, so it is compared with a store tiled losslessly on the
    same (half-overlapping) grid: every output value and the ROIs' coordinates and
    measurements exactly (the GeoJSON text but for each feature's random UUID)."""
    model = InferenceModel(tiny.random_model(), tiny.meta(), "tiny-random")
    lossless = {"store": {"compression": "lossless"}}
    first = infer_slide(slides["svs"], model, _cfg(threshold=0.5, tile=lossless), tmp_path / "a")
    fg = open_heatmap(Path(first.out_dir) / "heatmap.zarr").plane(0, 0)[:, :]
    tau = float(np.nanmedian(fg))  # a threshold that cuts the random map in two
    cfg = _cfg(threshold=tau, tile=lossless)
    streamed = infer_slide(slides["svs"], model, cfg, tmp_path / "stream")
    stored = infer_slide(slides["svs"], model, cfg, tmp_path / "store", keep_store=True)
    assert (tmp_path / "store" / "stores" / "svs_slide.zarr").is_dir()
    assert not (tmp_path / "stream" / "stores").exists()
    assert streamed.n_patches == stored.n_patches > 64  # stride half the patch: more than 8 x 8
    assert streamed.n_rois == stored.n_rois >= 1
    assert streamed.class_probs == stored.class_probs
    a, b = Path(streamed.out_dir), Path(stored.out_dir)
    assert (a / "overlay.png").read_bytes() == (b / "overlay.png").read_bytes()
    for name in ("rois.geojson", "tiles.geojson"):
        assert _features_without_ids(a / name) == _features_without_ids(b / name), name
    for name in ("heatmap.zarr", "class_probs.zarr"):
        mine, theirs = open_heatmap(a / name), open_heatmap(b / name)
        for channel in range(mine.levels[0].shape[0]):
            np.testing.assert_array_equal(
                mine.plane(0, channel)[:, :], theirs.plane(0, channel)[:, :]
            )
    assert np.nanstd(fg) > 0  # the random model's map varies: the comparison means something


def test_two_slides_take_turns_on_the_device(store_path, tmp_path):
    """Two threads (a GPU worker's two slides): the second slide's predictions wait until the
    first slide's last batch; everything else may overlap. The first slide's first batch waits
    up to 5 s for the second to start predicting: without turns it would."""
    second_started = threading.Event()
    events: list[str] = []

    def reporter(name: str):
        def report(done: int, total: int) -> None:
            events.append(name)
            if name == "b":
                second_started.set()
            elif done < total and events.count("a") == 1:
                second_started.wait(timeout=5.0)

        return report

    def run(name: str) -> None:
        infer_slide(
            store_path, _model(), _cfg(batch_size=8, write_tiles=False), tmp_path / name,
            slide_id=name, progress=reporter(name),
        )  # fmt: skip

    first = threading.Thread(target=run, args=("a",))
    first.start()
    while not events:  # the first slide holds the device
        time.sleep(0.01)
    second = threading.Thread(target=run, args=("b",))
    second.start()
    first.join()
    second.join()
    assert events.index("b") == events.count("a")  # all of a's batches, then b's
    assert len(set(events)) == 2 and events.count("a") > 1
