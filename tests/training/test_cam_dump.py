"""Stage 2: teacher CAMs written into the stores, exact, idempotent, and redone when stale."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
from storegen import make_store

import wsi_pixelcam.training.cam_dump as cam_dump
from wsi_pixelcam.data.store_arrays import completed_record
from wsi_pixelcam.data.transforms import EvalTransform
from wsi_pixelcam.model.cam import compute_cam
from wsi_pixelcam.model.checkpoint import CheckpointMeta, save_checkpoint
from wsi_pixelcam.model.encoders import build_encoder
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.training.cam_dump import dump_cams, file_sha256

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _teacher(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = PixelCAM(build_encoder("test_resnet", stride8_no_dilation=True), num_classes=2)
    meta = CheckpointMeta(("background", "tumour"), 32, MEAN, STD, 0.5, 32, stage="teacher")
    return save_checkpoint(path, model.eval(), meta)


def test_dump_matches_the_teachers_cams_and_leaves_the_store_alone(tmp_path: Path) -> None:
    store_path = make_store(tmp_path / "s.zarr", n=6, labels=[0, 1, -1, 1, 0, 1])
    patches_before = open_patch_store(store_path).patches[...]
    teacher = _teacher(tmp_path / "t.pt", seed=0)
    (result,) = dump_cams(teacher, [store_path], method="gradcampp", batch_size=4)
    assert (result.status, result.n_patches, result.feature_hw) == ("written", 6, (4, 4))
    store = open_patch_store(store_path)
    cams = store.group["cams"][...]
    assert cams.dtype == np.float16 and cams.shape == (6, 4, 4)
    record = store.derived_record("cams")
    assert record["teacher_sha256"] == file_sha256(teacher) and record["method"] == "gradcampp"
    assert np.array_equal(store.patches[...], patches_before)
    assert sorted(store.group.array_keys()) == [
        "cams", "coords", "label_coverage", "labels", "masks", "patches", "tissue_frac"
    ]  # fmt: skip
    # oracle: the teacher's CAM of each patch's true class (predicted where unlabelled)
    model = PixelCAM(build_encoder("test_resnet", stride8_no_dilation=True), num_classes=2)
    model.load_state_dict(torch.load(teacher, weights_only=True)["state_dict"])
    model.eval()
    images = torch.stack([EvalTransform(32, MEAN, STD)(p)[0] for p in patches_before])
    with torch.no_grad():
        predicted = model(images).image_logits.argmax(1)
    labels = torch.tensor([0, 1, int(predicted[2]), 1, 0, 1])
    expected = compute_cam(model, images, labels, "gradcampp").numpy()
    assert np.allclose(cams, expected, atol=2e-3)
    assert cams.min() >= 0 and cams.max() <= 1


def test_up_to_date_dump_is_skipped_and_a_new_teacher_redoes_it(tmp_path: Path) -> None:
    store_path = make_store(tmp_path / "s.zarr", n=4)
    first = _teacher(tmp_path / "a.pt", seed=0)
    dump_cams(first, [store_path])
    before = open_patch_store(store_path).group["cams"][...]
    (again,) = dump_cams(first, [store_path])
    assert again.status == "up to date" and again.n_patches == 4
    (other,) = dump_cams(_teacher(tmp_path / "b.pt", seed=1), [store_path])
    assert other.status == "written"
    assert not np.array_equal(open_patch_store(store_path).group["cams"][...], before)
    (method,) = dump_cams(first, [store_path], method="layercam")
    assert method.status == "written"


def test_interrupted_dump_is_detected_and_redone(tmp_path: Path, monkeypatch) -> None:
    store_path = make_store(tmp_path / "s.zarr", n=8)
    teacher = _teacher(tmp_path / "t.pt", seed=0)
    real = cam_dump.compute_cam
    calls = {"n": 0}

    def dies_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cam_dump, "compute_cam", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        dump_cams(teacher, [store_path], batch_size=4)
    assert completed_record(store_path, "cams") is None  # half a dump is never "complete"
    assert open_patch_store(store_path).derived_record("cams")["complete"] is False
    monkeypatch.setattr(cam_dump, "compute_cam", real)
    (result,) = dump_cams(teacher, [store_path], batch_size=4)
    assert result.status == "written"
    cams = open_patch_store(store_path).group["cams"][...]
    assert cams.shape == (8, 4, 4) and (cams.reshape(8, -1).max(axis=1) > 0).all()
    assert not (store_path / "_cams_partial").exists()
