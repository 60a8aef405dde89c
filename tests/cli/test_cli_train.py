"""``wsi-pixelcam train`` in-process: a tiny real run, and bad input answered in one line."""

import json
import shutil

import pytest
from storegen import damage_first_shard, make_store

from wsi_pixelcam.cli import main


def test_train_writes_a_model_and_a_summary(trained_run):
    summary = json.loads((trained_run.out / "train_summary.json").read_text())
    assert summary["stages"] == ["teacher", "cams", "pixelcam"]
    assert trained_run.model.is_file()


def test_unlabelled_store_names_the_options_that_exist(tmp_path, tiny_train_config, one_error_line):
    store = make_store(tmp_path / "unlabelled.zarr", labels=[-1] * 8)
    out = tmp_path / "run"
    argv = ["train", "--stores", str(store), "--out", str(out), "--config", str(tiny_train_config)]
    assert main(argv) == 1
    line = one_error_line()
    assert str(store) in line and "no labelled patch" in line
    assert "--slide-label" not in line  # no such option
    assert "--annotations" in line and "--labels-csv" in line and "'label' column" in line
    assert not (out / "train_summary.json").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--set", "optim.base_rate=0.1"], "config: optim.base_rate: unknown key"),
        (["--set", "optim.base_lr"], "--set 'optim.base_lr': expected KEY=VALUE"),
        (["--config", "{config_dir}/bad.yaml"], "bad.yaml: not valid YAML at line 2, column 13"),
        (["--config", "{config_dir}/missing.yaml"], "missing.yaml: cannot read config"),
    ],
)
def test_bad_config_is_a_usage_error_before_training(tmp_path, one_error_line, extra, expected):
    (tmp_path / "bad.yaml").write_text("optim: {base_lr: 0.1\n  batch_size: 4}\n")
    store = make_store(tmp_path / "s.zarr")
    out = tmp_path / "run"
    extra = [arg.format(config_dir=tmp_path) for arg in extra]
    assert main(["train", "--stores", str(store), "--out", str(out), *extra]) == 2
    assert expected in one_error_line()
    assert not out.exists()


def test_missing_store_is_one_line(tmp_path, tiny_train_config, one_error_line):
    missing = tmp_path / "nowhere.zarr"
    argv = ["train", "--stores", str(missing), "--out", str(tmp_path / "run")]
    assert main([*argv, "--config", str(tiny_train_config)]) == 1
    assert f"{missing}: no such patch store" in one_error_line()


def test_damaged_shard_read_in_a_loader_worker_is_one_line(tmp_path, trained_run, one_error_line):
    stores = [tmp_path / s.name for s in trained_run.stores]
    for source, copy in zip(trained_run.stores, stores, strict=True):
        shutil.copytree(source, copy)
        damage_first_shard(copy)
    argv = ["train", "--stores", *map(str, stores), "--out", str(tmp_path / "run")]
    argv += ["--config", str(trained_run.config), "--set", "data.num_workers=1", "-q"]
    assert main(argv) == 1
    line = one_error_line()  # not the worker's traceback torch appends
    assert "is damaged" in line and "re-tile the slide with --overwrite" in line
