"""Stores tiled with annotations carry their own masks: train picks best_loc and a tau, and
eval scores localisation without being given the annotations again."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path
from typing import Any

import pytest

from wsi_pixelcam.cli import main
from wsi_pixelcam.config import EvalConfig, EvalRunConfig, TileConfig, TrainConfig
from wsi_pixelcam.labels import LabelSource
from wsi_pixelcam.model.checkpoint import load_checkpoint
from wsi_pixelcam.tiling import tile_slide
from wsi_pixelcam.training.evaluate import evaluate
from wsi_pixelcam.training.fit import train

TINY: dict[str, Any] = {
    "model": {"encoder": "test_resnet", "stride8_no_dilation": True},
    "input": {"input_px": 32, "resize_px": 36},
    "optim": {"batch_size": 16, "base_lr": 0.01},
    "teacher": {"epochs": 1},
    "pixelcam": {"epochs": 1, "seeds": {"erode_k": 1}},
    "data": {"num_workers": 0},
    "eval": {"eval_px": 32},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, slides: dict[str, Path]) -> dict[str, Any]:
    """Two slides tiled with a Tumor ROI over the left part of their tissue, then trained."""
    root = tmp_path_factory.mktemp("tiled_masks")
    ring = [[1024, 512], [1920, 512], [1920, 2560], [1024, 2560], [1024, 512]]
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
    }
    geojson = root / "roi.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    cfg = TileConfig(target_mpp=0.5, patch_px=128)
    labels = LabelSource(annotations=geojson)
    train_store, val_store = (
        Path(tile_slide(slides[name], cfg, root / "stores", labels=labels).store_path)
        for name in ("svs", "generic")
    )
    result = train(
        TrainConfig.model_validate(TINY), [train_store], root / "out", val_store_paths=[val_store]
    )
    return {"result": result, "val": val_store}


def test_training_selects_best_loc_and_a_validation_tau(run: dict[str, Any]) -> None:
    result = run["result"]
    assert result.data.val_has_masks
    best_loc = result.out_dir / "pixelcam" / "best_loc.pt"
    assert result.model_path == best_loc and best_loc.is_file()
    _, meta = load_checkpoint(best_loc)
    assert 0.0 <= meta.val_metrics["best_tau"] < 1.0 and "pxap_pixel" in meta.val_metrics


def test_eval_scores_localisation_without_annotations(
    run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = run["result"].model_path
    scored = evaluate(
        ckpt, [run["val"]], EvalRunConfig(metrics=EvalConfig(eval_px=32), device="cpu")
    )
    assert scored.n_localised == 64 and not scored.stores_without_masks
    assert scored.pixelcam is not None and 0.0 < scored.pixelcam.pxap <= 100.0
    assert scored.pixelcam.val_tau_source == "checkpoint"
    assert main(["eval", "--model", str(ckpt), "--stores", str(run["val"]), "-q"]) == 0
    assert "PixelCAM         PxAP" in capsys.readouterr().out
