"""evaluate(): accuracy on every store, both maps' localisation where masks exist."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from storegen import make_store

from wsi_pixelcam.config import EvalConfig, EvalRunConfig
from wsi_pixelcam.data.transforms import EvalTransform
from wsi_pixelcam.errors import CheckpointError, DataError
from wsi_pixelcam.metrics import LocalizationAccumulator
from wsi_pixelcam.model.cam import compute_cam, upsample_map
from wsi_pixelcam.model.checkpoint import CheckpointMeta, save_checkpoint
from wsi_pixelcam.model.encoders import build_encoder
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.training.evaluate import evaluate

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL = EvalConfig(eval_px=32)


def _checkpoint(path: Path, stage: str = "pixelcam", **val_metrics: float) -> Path:
    torch.manual_seed(0)
    model = PixelCAM(build_encoder("test_resnet", stride8_no_dilation=True), num_classes=2)
    meta = CheckpointMeta(
        ("background", "tumour"), 32, MEAN, STD, 0.5, 32, stage=stage, val_metrics=val_metrics
    )  # type: ignore[arg-type]
    return save_checkpoint(path, model.eval(), meta)


def _oracle(
    ckpt: Path, stores: list[Path]
) -> tuple[float, LocalizationAccumulator, LocalizationAccumulator]:
    """Accuracy and both maps' accumulators, computed by hand on every patch."""
    model = PixelCAM(build_encoder("test_resnet", stride8_no_dilation=True), num_classes=2)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    model.eval()
    transform = EvalTransform(32, MEAN, STD)
    correct = total = 0
    pixel, cam = LocalizationAccumulator(32), LocalizationAccumulator(32)
    for path in stores:
        store = open_patch_store(path)
        images = torch.stack([transform(p)[0] for p in store.patches[...]])
        labels = torch.from_numpy(store.labels.astype(np.int64))
        with torch.no_grad():
            out = model(images)
        correct += int((out.image_logits.argmax(1) == labels).sum())
        total += len(labels)
        if store.has("masks"):
            masks = store.group["masks"][...]
            pixel.update(PixelCAM.foreground_map(out.pixel_logits, (32, 32)).numpy(), masks)
            cams = upsample_map(compute_cam(model, images, labels), (32, 32)).clamp(0, 1)
            cam.update(cams.numpy(), masks)
    return 100.0 * correct / total, pixel, cam


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("eval")
    return {
        "masked": [make_store(root / f"m{i}.zarr", n=8, seed=i) for i in range(2)],
        "plain": [make_store(root / "p.zarr", n=6, seed=5, with_masks=False)],
        "val": [make_store(root / "v.zarr", n=8, seed=9)],
    }


def test_scores_match_a_hand_computation(tmp_path: Path, stores) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", best_tau_pixel=0.3, best_tau_cam=0.6)
    result = evaluate(
        ckpt, stores["masked"] + stores["plain"], EvalRunConfig(metrics=EVAL, device="cpu")
    )
    accuracy, pixel, cam = _oracle(ckpt, stores["masked"] + stores["plain"])
    assert result.accuracy == pytest.approx(accuracy)
    assert result.n_patches == 22 and result.n_localised == 16
    assert result.stores_without_masks == (str(stores["plain"][0]),)
    assert result.pixelcam is not None and result.cam is not None
    assert result.pixelcam.pxap == pytest.approx(pixel.pxap(), abs=1e-6)
    assert result.cam.pxap == pytest.approx(cam.pxap(), abs=1e-6)
    assert result.pixelcam.at_fixed_tau == pixel.scores_at(0.5)
    # no validation stores given: the taus the checkpoint chose on its own validation split
    assert (result.pixelcam.val_tau, result.pixelcam.val_tau_source) == (0.3, "checkpoint")
    assert result.pixelcam.at_val_tau == pixel.scores_at(0.3)
    assert result.cam.at_val_tau == cam.scores_at(0.6)


def test_validation_stores_choose_the_tau(tmp_path: Path, stores) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", best_tau_pixel=0.3)
    result = evaluate(
        ckpt, stores["masked"], EvalRunConfig(metrics=EVAL), val_store_paths=stores["val"]
    )
    _, pixel_val, cam_val = _oracle(ckpt, stores["val"])
    assert result.pixelcam is not None and result.cam is not None
    assert result.pixelcam.val_tau == pixel_val.best_tau("miou")
    assert result.cam.val_tau == cam_val.best_tau("miou")
    assert result.pixelcam.val_tau_source == "validation stores"
    path = result.write_json(tmp_path / "eval" / "result.json")
    saved = json.loads(path.read_text())
    assert saved["pixelcam"]["pxap"] == pytest.approx(result.pixelcam.pxap)
    assert saved["accuracy"] == pytest.approx(result.accuracy)
    with pytest.raises(DataError, match="validation stores without masks"):
        evaluate(
            ckpt, stores["masked"], EvalRunConfig(metrics=EVAL), val_store_paths=stores["plain"]
        )


def test_teacher_and_maskless_evaluations(tmp_path: Path, stores) -> None:
    teacher = _checkpoint(tmp_path / "t.pt", stage="teacher")
    result = evaluate(teacher, stores["masked"], EvalRunConfig(metrics=EVAL, cam_method="layercam"))
    assert result.pixelcam is None and result.cam is not None  # its pixel head never trained
    assert result.cam.val_tau is None and result.cam.at_val_tau is None
    plain = evaluate(_checkpoint(tmp_path / "m.pt"), stores["plain"], EvalRunConfig(metrics=EVAL))
    assert plain.pixelcam is None and plain.cam is None and plain.n_localised == 0
    assert plain.accuracy == pytest.approx(_oracle(tmp_path / "m.pt", stores["plain"])[0])


def test_stores_that_do_not_fit_the_checkpoint_are_refused(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    with pytest.raises(DataError, match="no patch stores"):
        evaluate(ckpt, [])
    big = make_store(tmp_path / "big.zarr", n=2, patch_px=48)
    with pytest.raises(DataError, match=r"big.zarr: patches are 48 px but the model expects 32"):
        evaluate(ckpt, [big])
    coarse = make_store(tmp_path / "coarse.zarr", n=2, mpp=2.0)
    with pytest.raises(DataError, match=r"coarse.zarr: patches are at 2 um/px but the model"):
        evaluate(ckpt, [coarse])
    other = make_store(tmp_path / "o.zarr", n=2, classes=("normal", "tumour"), labels=[0, 1])
    with pytest.raises(DataError, match="class 'normal' is not in"):
        evaluate(ckpt, [other])
    with pytest.raises(CheckpointError, match="not found"):
        evaluate(tmp_path / "missing.pt", [big])
