"""train(): the three stages on real tiny stores and a real tiny timm model, and its refusals."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from storegen import make_store

from wsi_pixelcam.config import TrainConfig, load_config
from wsi_pixelcam.errors import CheckpointError, ConfigError, DataError, ModelError
from wsi_pixelcam.model.checkpoint import load_checkpoint
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.training.fit import train

FAST: dict[str, Any] = {
    "model": {"encoder": "test_resnet", "stride8_no_dilation": True},
    "input": {"input_px": 32, "resize_px": 36},
    "optim": {"batch_size": 8, "base_lr": 0.01},
    "teacher": {"epochs": 2},
    "pixelcam": {"epochs": 1, "seeds": {"erode_k": 1}},
    "data": {"num_workers": 0, "val_fraction": 0.25},
    "eval": {"eval_px": 32},
}


def _cfg(**sections: Any) -> TrainConfig:
    settings = json.loads(json.dumps(FAST))
    for key, value in sections.items():
        if isinstance(value, dict):
            settings.setdefault(key, {}).update(value)
        else:
            settings[key] = value
    return TrainConfig.model_validate(settings)


def _stores(root: Path, n_stores: int = 4, n: int = 16) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [make_store(root / f"s{i}.zarr", n=n, seed=i) for i in range(n_stores)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Path], list[tuple]]:
    root = tmp_path_factory.mktemp("full")
    stores = _stores(root / "stores")
    calls: list[tuple] = []

    def task(name: str):
        return lambda done, total: calls.append((name, done, total))

    result = train(_cfg(), stores, root / "out", progress=task)
    return result, stores, calls


def test_all_stages_write_checkpoints_cams_metrics_and_split(full_run) -> None:
    result, stores, calls = full_run
    out = result.out_dir
    assert result.stages == ("teacher", "cams", "pixelcam")
    summary = result.data
    assert summary.class_names == ("background", "tumour")
    assert not set(summary.train_slides) & set(summary.val_slides)
    assert len(summary.val_slides) == 1 and summary.val_counts == (8, 8)
    assert summary.train_counts == (24, 24) and summary.val_has_masks
    assert json.loads((out / "split.json").read_text())["val_slides"] == list(summary.val_slides)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        ("teacher", 1), ("teacher", 2), ("pixelcam", 1)
    ]  # fmt: skip
    assert rows[0]["pixel_loss"] == 0 and rows[2]["pixel_loss"] > 0
    assert rows[0]["seeds_fg"] == rows[0]["seeds_bg"] == 0  # the teacher draws none
    assert rows[2]["seeds_fg"] > 0 and rows[2]["seeds_bg"] > rows[2]["seeds_fg"]
    assert {"val_accuracy", "val_pxap_cam", "val_pxap_pixel", "val_best_tau"} <= set(rows[2])
    for stage in ("teacher", "pixelcam"):
        assert {p.name for p in (out / stage).iterdir()} == {
            "last.pt", "best_cls.pt", "best_loc.pt", "state.pt"
        }  # fmt: skip
    # the progress callback saw every training batch: 48 patches / 8 = 6 steps per epoch
    assert ("teacher epoch 2", 6, 6) in calls and ("pixelcam epoch 1", 6, 6) in calls
    # CAMs were dumped into the training stores only, beside untouched patches
    for path in stores:
        store = open_patch_store(path)
        has_cams = str(path) in summary.train_stores
        assert store.has("cams") == has_cams
        if has_cams:
            assert store.group["cams"].shape == (16, 4, 4)
            assert store.derived_record("cams")["complete"] is True
    assert result.model_path == out / "pixelcam" / "best_loc.pt"


def test_checkpoint_holds_what_inference_needs(full_run) -> None:
    result, _, _ = full_run
    model, meta = load_checkpoint(result.model_path)
    assert meta.stage == "pixelcam" and meta.class_names == ("background", "tumour")
    assert (meta.input_px, meta.patch_px, meta.mpp) == (32, 32, 0.5)
    assert meta.mean == (0.485, 0.456, 0.406)
    assert meta.train_config["model"]["encoder"] == "test_resnet"
    assert {"accuracy", "pxap_pixel", "pxap_cam", "best_tau"} <= set(meta.val_metrics)
    assert model.encoder.reduction == 8
    teacher, teacher_meta = load_checkpoint(result.out_dir / "teacher" / "best_cls.pt")
    assert teacher_meta.stage == "teacher"
    # PixelCAM started from the teacher but trained on: the encoders differ now
    first = next(iter(teacher.encoder.state_dict()))
    assert not torch.equal(teacher.encoder.state_dict()[first], model.encoder.state_dict()[first])


def test_finished_stages_are_not_redone(full_run) -> None:
    result, stores, _ = full_run
    before = (result.out_dir / "metrics.jsonl").read_text()
    again = train(_cfg(), stores, result.out_dir)
    assert again.teacher.resumed_from == 2 and again.pixelcam.resumed_from == 1
    assert {c.status for c in again.cams} == {"up to date"}
    assert (result.out_dir / "metrics.jsonl").read_text() == before


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    stores = _stores(tmp_path / "stores", n_stores=3, n=8)
    cfg = _cfg(data={"val_fraction": 0.3})
    straight = train(cfg, stores, tmp_path / "straight", stage="teacher")

    def stop_in_epoch_2(name: str):
        def report(done: int, total: int) -> None:
            if name == "teacher epoch 2":
                raise KeyboardInterrupt

        return report

    with pytest.raises(KeyboardInterrupt):
        train(cfg, stores, tmp_path / "cut", stage="teacher", progress=stop_in_epoch_2)
    resumed = train(cfg, stores, tmp_path / "cut", stage="teacher")
    assert resumed.teacher.resumed_from == 1
    assert [r["epoch"] for r in resumed.teacher.history] == [1, 2]
    a, b = _weights(straight.teacher.last), _weights(resumed.teacher.last)
    assert all(torch.equal(a[k], b[k]) for k in a)  # deterministic, and resumed exactly
    other = train(
        _cfg(data={"val_fraction": 0.3}, seed=1), stores, tmp_path / "seed1", stage="teacher"
    )
    c = _weights(other.teacher.last)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed matters


def test_stages_run_separately_and_in_order(tmp_path: Path) -> None:
    stores = _stores(tmp_path / "stores", n_stores=2, n=8)
    cfg = _cfg(data={"val_fraction": 0.0, "num_workers": 2}, teacher={"epochs": 1})
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="run the teacher stage first"):
        train(cfg, stores, out, stage="cams")
    teacher = train(cfg, stores, out, stage="teacher")
    assert teacher.stages == ("teacher",) and teacher.pixelcam is None
    assert teacher.teacher.best_loc is None  # no validation: no localisation checkpoint
    with pytest.raises(DataError, match="run the cams stage"):
        train(cfg, stores, out, stage="pixelcam")
    cams = train(cfg, stores, out, stage="cams")
    assert [c.status for c in cams.cams] == ["written", "written"]
    pixelcam = train(cfg, stores, out, stage="pixelcam")
    assert pixelcam.model_path == out / "pixelcam" / "best_cls.pt"
    with pytest.raises(ConfigError, match=r"other settings \(optim.base_lr\)"):
        train(
            _cfg(data={"val_fraction": 0.0}, optim={"base_lr": 0.1}), stores, out, stage="teacher"
        )


def test_bad_inputs_fail_with_one_clear_error(tmp_path: Path) -> None:
    good = _stores(tmp_path / "good", n_stores=2, n=4)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no patch stores"):
        train(_cfg(), [], out)
    unlabelled = make_store(tmp_path / "u.zarr", n=4, labels=[-1] * 4)
    with pytest.raises(DataError, match=r"u.zarr: no labelled patch"):
        train(_cfg(), [*good, unlabelled], out)
    one_class = [make_store(tmp_path / f"o{i}.zarr", n=4, labels=[1] * 4) for i in range(2)]
    with pytest.raises(DataError, match=r"only one class \('tumour'\)"):
        train(_cfg(), one_class, out)
    coarse = make_store(tmp_path / "coarse.zarr", n=4, mpp=1.0)
    with pytest.raises(DataError, match=r"coarse.zarr: patches are at 1 um/px but the first store"):
        train(_cfg(), [*good, coarse], out)
    with pytest.raises(DataError, match="patches are 32 px but the config expects 64 px"):
        train(_cfg(data={"patch_px": 64}), good, out)
    with pytest.raises(ModelError, match="unknown encoder 'test_resnetx'; did you mean"):
        train(_cfg(model={"encoder": "test_resnetx"}), good, out, stage="teacher")
    weights = tmp_path / "vit.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(1)}, weights)
    with pytest.raises(ModelError, match="weights do not fit encoder test_resnet"):
        train(_cfg(model={"pretrained": str(weights)}), good, out, stage="teacher")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            train(_cfg(device="cuda"), good, out)
    assert not out.exists()  # every refusal came before anything was written


@pytest.mark.parametrize("name", ["train.yaml", "train_paper.yaml", "train_cpu_demo.yaml"])
def test_shipped_train_configs_load(name: str) -> None:
    configs = Path(__file__).resolve().parents[2] / "configs"
    cfg = load_config(TrainConfig, configs / name)
    if name == "train.yaml":
        assert cfg == TrainConfig()  # the defaults, spelled out
    if name == "train_paper.yaml":
        assert cfg.model.encoder == "resnet50" and cfg.pixelcam.seeds.erode_k == 11


def test_a_class_only_in_validation_is_one_clear_error(tmp_path: Path) -> None:
    train_stores = [
        make_store(tmp_path / f"t{i}.zarr", n=8, seed=i, labels=[0] * 8) for i in range(2)
    ]
    val_store = make_store(tmp_path / "v.zarr", n=8, seed=5)
    with pytest.raises(DataError, match=r"'tumour' is labelled only in the validation stores"):
        train(_cfg(), train_stores, tmp_path / "out", val_store_paths=[val_store])
    assert not (tmp_path / "out").exists()


def test_a_configured_class_no_store_has_is_one_clear_error(tmp_path: Path) -> None:
    stores = _stores(tmp_path / "stores", n_stores=2, n=8)
    cfg = _cfg(data={"classes": ["background", "tumour", "necrosis"], "val_fraction": 0.0})
    with pytest.raises(DataError, match=r"'necrosis' \(data.classes\) is labelled in none"):
        train(cfg, stores, tmp_path / "out")
