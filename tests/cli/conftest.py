"""Fixtures the in-process CLI tests share: tiny stores and a model trained by ``train``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from storegen import make_store

from wsi_pixelcam.cli import main

TINY_TRAIN_YAML = """\
model: {encoder: test_resnet, stride8_no_dilation: true}
input: {input_px: 32, resize_px: 36}
optim: {batch_size: 8, base_lr: 0.01}
teacher: {epochs: 1}
pixelcam: {epochs: 1, seeds: {erode_k: 1}}
data: {num_workers: 0, val_fraction: 0.25}
eval: {eval_px: 32}
"""


@pytest.fixture
def one_error_line(capsys: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """Reads what the command printed: exactly one ``wsi-pixelcam: error:`` line on stderr and
    no traceback, as every user error must be reported; returns the line."""

    def read() -> str:
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("wsi-pixelcam: error: "), captured.err
        return err[0]

    return read


@dataclass(frozen=True)
class TrainedRun:
    """A run ``wsi-pixelcam train`` made from tiny stores (32 px patches at 0.5 um/px)."""

    config: Path
    stores: list[Path]
    out: Path
    model: Path


@pytest.fixture(scope="session")
def tiny_train_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(TINY_TRAIN_YAML)
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_train_config: Path) -> TrainedRun:
    root = tmp_path_factory.mktemp("trained")
    stores = [make_store(root / f"s{i}.zarr", n=16, seed=i) for i in range(4)]
    out = root / "run"
    argv = ["train", "--stores", *map(str, stores), "--out", str(out)]
    assert main([*argv, "--config", str(tiny_train_config), "-q"]) == 0
    stage = out / "pixelcam"
    model = next(p for p in (stage / "best_loc.pt", stage / "best_cls.pt") if p.exists())
    return TrainedRun(tiny_train_config, stores, out, model)
