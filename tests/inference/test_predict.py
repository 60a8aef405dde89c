"""Prediction over a patch source: the model's own numbers for each patch, or a clear refusal."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import multiprocessing
from types import SimpleNamespace

import numpy as np
import pytest
import tiny_pixelcam as tiny
import torch

from wsi_pixelcam.config import InferConfig, TileConfig
from wsi_pixelcam.data.transforms import EvalTransform
from wsi_pixelcam.errors import ModelError, TilingMismatchError
from wsi_pixelcam.inference import patch_source
from wsi_pixelcam.inference.patch_source import StoreSource
from wsi_pixelcam.inference.predict import InferenceModel, predict_source
from wsi_pixelcam.model.cam import compute_cam
from wsi_pixelcam.model.device import resolve_device
from wsi_pixelcam.store.patch_store import open_patch_store
from wsi_pixelcam.tiling import tile_slide


@pytest.fixture(scope="module")
def store_path(slides, tmp_path_factory):
    cfg = TileConfig(target_mpp=tiny.MPP, patch_px=tiny.PATCH_PX)
    return tile_slide(slides["svs"], cfg, tmp_path_factory.mktemp("stores")).store_path


def _reference(net, meta, patches: np.ndarray):
    """The model applied patch by patch through the training side's eval transform."""
    transform = EvalTransform(meta.input_px, meta.mean, meta.std)
    images = torch.stack([transform(p)[0] for p in patches])
    with torch.no_grad():
        out = net(images)
    probs = torch.softmax(out.image_logits, 1).numpy()
    fg = torch.softmax(out.pixel_logits, 1)[:, 1].numpy()
    return images, probs, fg


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "worker-process"])
def test_batches_cover_the_store_in_order_and_match_the_model(store_path, workers):
    net, meta = tiny.random_model(), tiny.meta()
    store = open_patch_store(store_path)
    cfg = InferConfig(batch_size=24, num_workers=workers, teacher_cam=True, cam_method="cam")
    batches = list(predict_source(StoreSource(store), InferenceModel(net, meta), cfg, cam_class=1))
    assert [b.rows[0] for b in batches] == list(range(0, len(store), 24))
    assert np.array_equal(np.concatenate([b.rows for b in batches]), np.arange(len(store)))
    probs = np.concatenate([b.class_probs for b in batches])
    fg = np.concatenate([b.fg_maps for b in batches])
    cams = np.concatenate([b.cams for b in batches])
    images, ref_probs, ref_fg = _reference(net, meta, np.asarray(store.patches[:]))
    assert probs.shape == (len(store), 2) and fg.shape == (len(store), 4, 4)  # feature grid
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    np.testing.assert_allclose(fg, ref_fg, atol=1e-5)
    ref_cams = compute_cam(net, images, 1, "cam").numpy()
    np.testing.assert_allclose(cams, ref_cams, atol=1e-4)
    assert fg.std() > 0  # random weights: the maps really vary, the comparison means something


def test_without_teacher_cam_the_cam_array_is_empty(store_path):
    store = open_patch_store(store_path)
    cfg = InferConfig(batch_size=len(store), num_workers=0)
    (batch,) = predict_source(
        StoreSource(store), InferenceModel(tiny.random_model(), tiny.meta()), cfg
    )
    assert batch.cams.shape == (len(store), 0, 0)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"mpp": 1.0}, ["0.5 um/px", "1 um/px"]),
        ({"mpp": 0.53}, ["0.5 um/px", "0.53 um/px"]),
        ({"patch_px": 64}, ["128 px", "64 px"]),
    ],
    ids=["mpp", "mpp-beyond-tolerance", "patch-size"],
)
def test_a_store_tiled_otherwise_is_refused_naming_both_values(store_path, changes, words):
    store = open_patch_store(store_path)
    model = InferenceModel(tiny.random_model(), tiny.meta(**changes))
    with pytest.raises(TilingMismatchError) as info:
        next(predict_source(StoreSource(store), model, InferConfig(num_workers=0)))
    for word in words:
        assert word in str(info.value)
    assert str(store.path) in str(info.value)


def test_mpp_within_tolerance_is_accepted(store_path):
    store = open_patch_store(store_path)
    model = InferenceModel(tiny.random_model(), tiny.meta(mpp=0.51))
    cfg = InferConfig(num_workers=0, mpp_tolerance=0.05)
    batch = next(predict_source(StoreSource(store), model, cfg))
    assert len(batch.class_probs) > 0


def test_device_requests():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelError, match="not a torch device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_no_worker_processes_inside_a_daemonic_process(monkeypatch):
    assert patch_source._loader_workers(3) == 3
    monkeypatch.setattr(multiprocessing, "current_process", lambda: SimpleNamespace(daemon=True))
    assert patch_source._loader_workers(3) == 0


def test_fingerprint_changes_with_the_weights():
    net = tiny.random_model()
    before = InferenceModel(net, tiny.meta()).fingerprint()
    assert InferenceModel(tiny.random_model(), tiny.meta()).fingerprint() == before
    with torch.no_grad():
        net.pixel_head.bias.add_(1e-3)
    assert InferenceModel(net, tiny.meta()).fingerprint() != before
