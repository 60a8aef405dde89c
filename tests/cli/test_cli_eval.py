"""``wsi-pixelcam eval`` in-process: a trained model on real stores, and bad input in one line."""

import json
import shutil

import pytest
from storegen import damage_first_shard

from wsi_pixelcam.cli import main


def test_eval_reports_accuracy_and_localisation(tmp_path, trained_run, capsys):
    result = tmp_path / "eval.json"
    argv = ["eval", "--model", str(trained_run.model), "--stores", str(trained_run.stores[0])]
    assert main([*argv, "--json", str(result), "-q"]) == 0
    out = capsys.readouterr().out
    assert "16 patches: accuracy" in out and "PxAP" in out
    assert json.loads(result.read_text())["n_patches"] == 16


def test_damaged_shard_names_the_store_and_the_fix(tmp_path, trained_run, one_error_line):
    store = tmp_path / "s0.zarr"
    shutil.copytree(trained_run.stores[0], store)
    damage_first_shard(store)
    assert main(["eval", "--model", str(trained_run.model), "--stores", str(store)]) == 1
    line = one_error_line()
    assert f"{store}: patch store of slide 's0' is damaged" in line
    assert "re-tile the slide with --overwrite" in line and "b'" not in line


@pytest.mark.parametrize(
    ("argv", "code", "problem"),
    [
        (["--stores", "{store}"], 2, "eval needs --model and --stores"),
        (["--model", "{tmp}/none.pt", "--stores", "{store}"], 1, "none.pt: checkpoint not found"),
        (["--model", "{model}", "--stores", "{tmp}/none.zarr"], 1, "none.zarr: no such patch"),
        (["--heatmap", "{tmp}/h", "--annotations", "{tmp}/a.geojson"], 2, "needs --annotations"),
    ],
)
def test_bad_input_is_one_line(tmp_path, trained_run, one_error_line, argv, code, problem):
    values = {"tmp": tmp_path, "store": trained_run.stores[0], "model": trained_run.model}
    assert main(["eval", *(arg.format(**values) for arg in argv)]) == code
    assert problem in one_error_line()
