"""``wsi-pixelcam infer`` in-process on a real slide and LocalCluster, and its refusals.

A bad checkpoint, config or output directory is refused once, in one line naming the file,
before the cluster starts: no status table is written and no slide is scheduled.
"""

import json

import pytest
import torch

from wsi_pixelcam.cli import main


def test_infer_stores_with_a_trained_model(tmp_path, trained_run, capsys):
    out = tmp_path / "out"
    stores = [str(s) for s in trained_run.stores[:2]]
    argv = ["infer", *stores, "--model", str(trained_run.model), "--out", str(out)]
    assert main([*argv, "--workers", "1", "-q"]) == 0
    for store in trained_run.stores[:2]:
        summary = json.loads((out / store.stem / "summary.json").read_text())
        assert summary["source"]["n_patches"] == 16
        assert (out / store.stem / "rois.geojson").is_file()
    assert "2 slide(s): 2 ok" in capsys.readouterr().out


def _not_a_checkpoint(path):
    path.write_text("weights\n")


def _foreign_checkpoint(path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)


def _damaged_checkpoint(path):
    torch.save({"format_version": 1, "meta": {}}, path)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (None, "checkpoint not found"),
        (_not_a_checkpoint, "not a wsi-pixelcam checkpoint"),
        (_foreign_checkpoint, "not a wsi-pixelcam checkpoint (no format_version)"),
        (_damaged_checkpoint, "checkpoint metadata is damaged"),
    ],
)
def test_bad_checkpoint_is_refused_before_any_slide(
    tmp_path, slides, one_error_line, make, problem
):
    model = tmp_path / "model.pt"
    if make is not None:
        make(model)
    out = tmp_path / "out"
    assert main(["infer", str(slides["svs"]), "--model", str(model), "--out", str(out)]) == 1
    assert f"{model}: {problem}" in one_error_line()
    assert not (out / "infer_status.csv").exists() and not (out / "svs_slide").exists()


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--set", "roi_class=Tumour"], "roi_class 'Tumour' is not one of the model's classes"),
        (["--set", "tile.patch_px=64"], "tile.patch_px=64 but the model was trained at 32"),
        (["--set", "stitch.window=flat"], "config: stitch: unknown key"),
        (["--config", "{tmp}/c.yaml"], "c.yaml: min_area: unknown key"),
    ],
)
def test_bad_config_is_one_usage_line_before_any_slide(
    tmp_path, slides, trained_run, one_error_line, extra, problem
):
    (tmp_path / "c.yaml").write_text("min_area: 10\n")
    out = tmp_path / "out"
    argv = ["infer", str(slides["svs"]), "--model", str(trained_run.model), "--out", str(out)]
    assert main([*argv, *(arg.format(tmp=tmp_path) for arg in extra)]) == 2
    assert problem in one_error_line()
    assert not out.exists()


def test_unwritable_output_is_one_line(tmp_path, slides, trained_run, one_error_line):
    blocker = tmp_path / "file"
    blocker.write_text("")  # no directory can be made under a regular file, even as root
    out = blocker / "out"
    argv = ["infer", str(slides["svs"]), "--model", str(trained_run.model), "--out", str(out)]
    assert main(argv) == 1
    assert f"{out}: cannot create output directory" in one_error_line()
