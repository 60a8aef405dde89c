"""Checkpoints: a round trip reproduces the model exactly; anything else fails clearly."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from wsi_pixelcam import __version__
from wsi_pixelcam.errors import CheckpointError, OutputError
from wsi_pixelcam.model.checkpoint import (
    FORMAT_VERSION,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
)
from wsi_pixelcam.model.encoders import build_encoder
from wsi_pixelcam.model.pixelcam import PixelCAM


def _meta(**changes) -> CheckpointMeta:
    values = {
        "class_names": ("normal", "tumour"),
        "input_px": 32,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "mpp": 0.5,
        "patch_px": 40,
        "train_config": {"lr": 1e-3, "out": Path("/tmp/run"), "crop": [32, 32]},
        "val_metrics": {"accuracy": 91.5, "pxap": 70.25},
    }
    values.update(changes)
    return CheckpointMeta(**values)


def _trained_model(name: str, **options) -> PixelCAM:
    torch.manual_seed(0)
    model = PixelCAM(build_encoder(name, **options), num_classes=2, dropout=0.2)
    with torch.no_grad():  # move every weight and BN statistic away from its initial value
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.01)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "options"), [("test_resnet", {"stride8_no_dilation": True}), ("test_vit", {})]
)
def test_round_trip_gives_identical_outputs(tmp_path, name, options) -> None:
    model = _trained_model(name, **options)
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model, _meta())
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    loaded, meta = load_checkpoint(
        path, expect_class_names=["normal", "tumour"], expect_encoder=name
    )
    assert not loaded.training
    assert loaded.spec == model.spec
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before, after = model(images), loaded(images)
    assert torch.equal(before.image_logits, after.image_logits)
    assert torch.equal(before.pixel_logits, after.pixel_logits)
    assert meta.class_names == ("normal", "tumour")
    assert meta.mean == (0.485, 0.456, 0.406) and meta.patch_px == 40 and meta.mpp == 0.5
    assert meta.train_config == {"lr": 1e-3, "out": "/tmp/run", "crop": [32, 32]}
    assert meta.val_metrics == {"accuracy": 91.5, "pxap": 70.25}
    assert meta.package_version == __version__


def test_file_is_plain_data(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", _trained_model("test_resnet"), _meta())
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["model_spec"]["encoder"] == {
        "name": "test_resnet",
        "output_stride": None,
        "stride8_no_dilation": False,
    }


def test_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a wsi-pixelcam checkpoint"):
        load_checkpoint(text)
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="no format_version"):
        load_checkpoint(plain)


def test_other_format_version(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", _trained_model("test_resnet"), _meta())
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}"):
        load_checkpoint(path)


def test_weights_that_do_not_fit(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", _trained_model("test_resnet"), _meta())
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["classifier.weight"] = torch.zeros(5, 96)
    del payload["state_dict"]["pixel_head.bias"]
    torch.save(payload, path)
    with pytest.raises(
        CheckpointError, match=r"missing \(1\): pixel_head\.bias.*classifier\.weight"
    ):
        load_checkpoint(path)


def test_mismatched_setup(tmp_path) -> None:
    model = _trained_model("test_resnet")
    with pytest.raises(CheckpointError, match="3 class names"):
        save_checkpoint(tmp_path / "m.pt", model, _meta(class_names=("a", "b", "c")))
    path = save_checkpoint(tmp_path / "m.pt", model, _meta())
    with pytest.raises(CheckpointError, match="test_vit"):
        load_checkpoint(path, expect_encoder="test_vit")
    with pytest.raises(CheckpointError, match="classes"):
        load_checkpoint(path, expect_class_names=["benign", "malignant"])


def test_overwrite_is_atomic(tmp_path) -> None:
    first = _trained_model("test_resnet")
    path = save_checkpoint(tmp_path / "m.pt", first, _meta(val_metrics={"pxap": 1.0}))
    save_checkpoint(path, first, _meta(val_metrics={"pxap": 2.0}))
    assert load_checkpoint(path)[1].val_metrics == {"pxap": 2.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    model = _trained_model("test_resnet")
    path = save_checkpoint(tmp_path / "m.pt", model, _meta(val_metrics={"pxap": 1.0}))

    def crash_midway(obj, stream) -> None:
        stream.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OutputError, match=r"m\.pt"):
        save_checkpoint(path, model, _meta(val_metrics={"pxap": 2.0}))
    monkeypatch.undo()
    assert load_checkpoint(path)[1].val_metrics == {"pxap": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
