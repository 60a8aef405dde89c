"""`wsi-pixelcam tile` end to end on a real LocalCluster: batch, status table, bad input."""

import csv
import json
import shutil
import subprocess
import sys
import uuid

import pytest

from wsi_pixelcam.cli import main
from wsi_pixelcam.store import open_patch_store


def _status(out):
    with open(out / "tile_status.csv", newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


@pytest.fixture
def mixed_dir(tmp_path, slides):
    """A directory with a good slide, a text file named .svs and a slide without MPP."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(slides["svs"], src / "good.svs")
    (src / "notes.svs").write_text("not a slide\n")
    shutil.copy(slides["no_mpp"], src / "nompp.tif")
    return src


def test_bad_slides_do_not_kill_the_batch_and_rerun_skips(tmp_path, mixed_dir, capsys):
    out = tmp_path / "out"
    args = ["tile", str(mixed_dir), "--out", str(out), "--patch-px", "128", "--workers", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    status = _status(out)
    assert status["good"]["status"] == "ok"
    assert status["notes"]["status"] == "failed"
    assert status["notes"]["error_class"] == "UnsupportedSlideError"
    assert status["nompp"]["error_class"] == "MppError" and "--mpp" in status["nompp"]["message"]
    assert "notes.svs: not a slide" in err and "Traceback" not in err
    # not a terminal: progress comes as plain log lines, never carriage-return redraws
    assert "\r" not in err and "\x1b[" not in err
    assert any(line.startswith("slides: 100%") for line in err.splitlines())
    assert len(open_patch_store(out / "good.zarr")) == 64
    assert not (out / "notes.zarr").exists() and not (out / "nompp.zarr").exists()

    (mixed_dir / "notes.svs").unlink()
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,mpp\n{mixed_dir / 'good.svs'},\n{mixed_dir / 'nompp.tif'},0.25\n")
    assert (
        main(
            [
                "tile",
                "--manifest",
                str(manifest),
                "--out",
                str(out),
                "--patch-px",
                "128",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    status = _status(out)
    assert status["good"]["status"] == "skipped" and status["nompp"]["status"] == "ok"


def test_manifest_with_missing_file_fails_only_that_slide(tmp_path, slides, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,slide_id\n{slides['svs']},a\nmissing.svs,b\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "tile",
                "--manifest",
                str(manifest),
                "--out",
                str(out),
                "--patch-px",
                "128",
                "--workers",
                "1",
            ]
        )
        == 1
    )
    status = _status(out)
    assert status["a"]["status"] == "ok" and "no such file" in status["b"]["message"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [("file,mpp\nx.svs,1\n", "needs a 'path' column"), ("path,colour\nx.svs,red\n", "unknown")],
)
def test_bad_manifest_is_a_usage_error(tmp_path, capsys, content, expected):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    assert main(["tile", "--manifest", str(manifest), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.csv" in err[0] and expected in err[0]


def test_empty_directory_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["tile", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no slides found" in capsys.readouterr().err


def test_unwritable_output_fails_in_one_line(tmp_path, slides, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a directory cannot be created under a regular file (even as root)
    assert main(["tile", str(slides["svs"]), "--out", str(blocker / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create output directory" in err[0] and "file/out" in err[0]


def test_annotation_labels_via_cli(tmp_path, slides, layout):
    # Tumor covers the left half of the tissue box (x 1024..2048)
    ann_dir = tmp_path / "ann"
    ann_dir.mkdir()
    x0, y0, _, y1 = layout.box
    ring = [[x0, y0], [2048, y0], [2048, y1], [x0, y1], [x0, y0]]
    feature = {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": "Tumor", "color": [200, 0, 0]},
        },
    }
    (ann_dir / "svs_slide.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [feature]})
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "tile",
                str(slides["svs"]),
                "--out",
                str(out),
                "--patch-px",
                "128",
                "--annotations",
                str(ann_dir),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    store = open_patch_store(out / "svs_slide.zarr")
    assert store.classes == ["background", "Tumor"]
    tumor = store.coords[store.labels == 1]
    assert len(tumor) == 32 and (tumor[:, 0] < 2048).all()
    masks = store.group["masks"][...]  # kept for evaluation: the Tumor patches are all ROI
    assert masks.shape == (64, 128, 128) and masks.sum() == 32 * 128 * 128
    assert masks[store.labels == 1].all()


def test_help_and_tile_do_not_import_torch(tmp_path, slides):
    code = (
        "import sys; from wsi_pixelcam.cli import main; "
        f"rc = main(['tile', {str(slides['svs'])!r}, '--out', {str(tmp_path)!r}, "
        "'--workers', '1', '-q']); "
        "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    result = subprocess.run(
        [sys.executable, "-m", "wsi_pixelcam", "--help"], capture_output=True, text=True, check=True
    )
    assert "tile" in result.stdout


def test_set_overrides_any_config_key(tmp_path, slides):
    out = tmp_path / "out"
    args = ["tile", str(slides["svs"]), "--out", str(out), "--set", "patch_px=128"]
    assert main([*args, "--workers", "1", "-q"]) == 0
    assert len(open_patch_store(out / "svs_slide.zarr")) == 64  # 256 px patches would give 16


def test_set_with_an_unknown_key_is_one_usage_line(tmp_path, slides, capsys):
    out = tmp_path / "out"
    assert main(["tile", str(slides["svs"]), "--out", str(out), "--set", "tissue.closing=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["wsi-pixelcam: error: config: tissue.closing: unknown key"]
    assert not out.exists()  # refused before anything was written


def test_second_run_on_the_same_output_fails_without_touching_the_first(tmp_path, slides, capsys):
    from wsi_pixelcam.store.lock import StoreLock

    out = tmp_path / "out"
    out.mkdir()
    (out / "tile_status.csv").write_text("the first run's table\n")
    with StoreLock(out / "tile_status"):  # as a live run holds it
        assert main(["tile", str(slides["svs"]), "--out", str(out), "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    lock = out / "tile_status.lock"
    assert f"{lock}: another run is writing tile outputs to {out} (pid" in err[0]
    assert (out / "tile_status.csv").read_text() == "the first run's table\n"
    assert not (out / "svs_slide.zarr").exists()
