"""The cohort recipes end to end: two generated slides, a real LocalCluster of two workers."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import slidegen

from wsi_pixelcam.geo.qupath_rules import validate_geojson_file

COHORT = Path(__file__).resolve().parents[1] / "pipelines" / "cohort.py"

TINY_TRAIN = """
model: {encoder: test_resnet, stride8_no_dilation: true}
input: {input_px: 32, resize_px: 36}
optim: {batch_size: 16, base_lr: 0.01}
teacher: {epochs: 1}
pixelcam: {epochs: 1, seeds: {erode_k: 1}}
data: {val_fraction: 0.0, num_workers: 0}
eval: {eval_px: 32}
device: cpu
"""
SMALL_TILES = "target_mpp: 1.0\npatch_px: 64\n"


def _recipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COHORT), *args], capture_output=True, text=True, timeout=600
    )


def test_cohort_recipes_on_a_local_cluster(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for name, box in (("a", (256, 256, 1792, 1536)), ("b", (512, 256, 1536, 1792))):
        image = slidegen.tissue_image(2048, 2048, [box], seed=len(name))
        slidegen.write_svs(slides / f"{name}.svs", image, 0.5, (1, 4))
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"path,label\n{slides / 'a.svs'},tumor\n{slides / 'b.svs'},normal\n")
    (tmp_path / "train.yaml").write_text(TINY_TRAIN)
    (tmp_path / "tile.yaml").write_text(SMALL_TILES)
    run = tmp_path / "run"
    common = [
        "--out",
        str(run),
        "--workers",
        "2",
        "--tile-config",
        str(tmp_path / "tile.yaml"),
        "--train-config",
        str(tmp_path / "train.yaml"),
    ]

    done = _recipe("all", "--manifest", str(manifest), *common)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(run / "stores" / "tile_status.csv", newline="") as handle:
        assert {r["slide_id"]: r["status"] for r in csv.DictReader(handle)} == {
            "a": "ok",
            "b": "ok",
        }
    with open(run / "infer" / "infer_status.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["ok", "ok"]
    for slide in ("a", "b"):
        summary = json.loads((run / "infer" / slide / "summary.json").read_text())
        assert summary["source"]["n_patches"] > 0
        assert summary["rois"]["class"] == "tumor"  # the positive class, not "normal"
        validate_geojson_file(run / "infer" / slide / "rois.geojson")
    steps = json.loads((run / "run_manifest.json").read_text())["steps"]
    assert [s["step"] for s in steps] == ["tile", "train", "infer", "report"]
    assert steps[0]["outcomes"] == {"ok": 2} and all(s["exit_code"] == 0 for s in steps)
    index = (run / "report" / "index.html").read_text()
    assert 'href="slide-a.html"' in index and 'href="slide-b.html"' in index
    assert (run / "report" / "model.html").is_file()

    # each recipe again on its own: finished work is skipped
    again = _recipe("tile", "--slides", str(slides), *common)
    assert again.returncode == 0, again.stderr[-3000:]
    again = _recipe("infer", "--slides", str(run / "stores"), *common)
    assert again.returncode == 0, again.stderr[-3000:]
    steps = json.loads((run / "run_manifest.json").read_text())["steps"]
    assert steps[-2]["outcomes"] == {"skipped": 2} and steps[-1]["outcomes"] == {"skipped": 2}


def test_gpu_check_runs_its_whole_path_on_the_cpu(tmp_path):
    """The script a GPU session runs: known to work before device time is spent on it."""
    script = Path(__file__).resolve().parents[1] / "pipelines" / "gpu_check.py"
    args = ["--out", str(tmp_path), "--device", "cpu", "--encoder", "test_resnet"]
    args += ["--epochs", "1", "--batch-size", "32", "--patch-px", "64", "--mpp", "2.0"]
    done = subprocess.run(
        [sys.executable, str(script), *args, "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["amp"] is False
    assert report["patches"] > 50
    assert [row["stage"] for row in report["train_epochs"]] == ["teacher", "pixelcam"]
    assert all(row["patches_per_s"] > 0 for row in report["train_epochs"])
    assert report["infer_patches_per_s"] > 0 and report["peak_gpu_memory_gib"] is None
    assert "patches/s end to end" in done.stdout
