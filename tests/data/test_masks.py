"""Masks rasterised from QuPath annotations into a tiled store, placed by coords and offset."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch

from wsi_pixelcam.config import EvalRunConfig
from wsi_pixelcam.data.masks import add_masks_from_annotations
from wsi_pixelcam.errors import AnnotationError
from wsi_pixelcam.model.checkpoint import CheckpointMeta, save_checkpoint
from wsi_pixelcam.model.encoders import build_encoder
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.store import PatchStoreMeta, PatchStoreWriter, open_patch_store
from wsi_pixelcam.training.evaluate import evaluate

OFFSET = (10, 20)  # the slide's bounds offset: QuPath's frame starts here
CORNERS = [(100, 200), (164, 200), (100, 264)]  # level-0 top-left of three 64-px patches


def _tiled_store(path: Path, patch_px: int = 32) -> Path:
    """Patches of 64 level-0 px (32 px: read at downsample 2), as the tiler writes them."""
    writer = PatchStoreWriter(path, patch_px=patch_px, capacity=3)
    rng = np.random.default_rng(0)
    for xy in CORNERS:
        writer.append(rng.integers(0, 255, (patch_px, patch_px, 3), dtype=np.uint8), xy, 1.0)
    meta = PatchStoreMeta.model_validate(
        {
            "slide_id": path.stem,
            "n_patches": 3,
            "slide": {
                "path": "s.svs", "name": "s.svs", "backend": "tiffslide",
                "dimensions_level0": [400, 400], "bounds_offset": list(OFFSET),
            },
            "mpp": {"value": 0.25, "x": 0.25, "y": 0.25, "source": "test"},
            "tiling": {
                "effective_mpp": 0.5, "patch_px": patch_px, "stride_px": patch_px,
                "patch_level0": 64, "stride_level0": 64,
            },
            "labels": {
                "classes": ["background", "tumour"], "rule": {"background_class": "background"}
            },
        }
    )  # fmt: skip
    return writer.finalize(meta, labels=np.array([1, 1, 0], np.int16))


def _geojson(path: Path, boxes: dict[str, tuple[float, float, float, float]]) -> Path:
    features = [
        {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(shapely.box(*box)),
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }
        for name, box in boxes.items()
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_masks_land_where_the_annotation_is(tmp_path: Path) -> None:
    store = _tiled_store(tmp_path / "s.zarr")
    # in QuPath's frame: level-0 x 132..196, y 200..264 -> right half of patch 0, left of 1
    x0, y0 = 132 - OFFSET[0], 200 - OFFSET[1]
    geojson = _geojson(
        tmp_path / "a.geojson",
        {"Tumour": (x0, y0, x0 + 64, y0 + 64), "background": (-1000, -1000, 1000, 1000)},
    )
    assert add_masks_from_annotations(store, geojson) == 2
    masks = open_patch_store(store).group["masks"][...]
    assert masks[0][:, 16:].all() and not masks[0][:, :16].any()
    assert masks[1][:, :16].all() and not masks[1][:, 16:].any()
    assert not masks[2].any()
    assert open_patch_store(store).derived_record("masks")["mask_px"] == 32
    far = _geojson(tmp_path / "far.geojson", {"Tumour": (5000, 5000, 5100, 5100)})
    with pytest.raises(AnnotationError, match="no annotation overlaps the patches"):
        add_masks_from_annotations(store, far)


def test_large_patches_get_masks_of_at_most_128_px(tmp_path: Path) -> None:
    store = _tiled_store(tmp_path / "s.zarr", patch_px=256)
    x0, y0 = 132 - OFFSET[0], 200 - OFFSET[1]  # the right half of patch 0
    geojson = _geojson(tmp_path / "a.geojson", {"Tumour": (x0, y0, x0 + 32, y0 + 64)})
    assert add_masks_from_annotations(store, geojson) == 1
    masks = open_patch_store(store).group["masks"][...]
    assert (
        masks.shape == (3, 128, 128)
        and open_patch_store(store).derived_record("masks")["mask_px"] == 128
    )
    assert masks[0][:, 64:].all() and masks.sum() == 128 * 64


def test_background_only_annotations_give_empty_masks(tmp_path: Path) -> None:
    store = _tiled_store(tmp_path / "s.zarr")
    geojson = _geojson(tmp_path / "a.geojson", {"background": (0, 0, 1000, 1000)})
    assert add_masks_from_annotations(store, geojson) == 0
    masks = open_patch_store(store).group["masks"][...]
    assert masks.shape == (3, 32, 32) and not masks.any()


def test_evaluate_rasterises_masks_from_annotations(tmp_path: Path) -> None:
    store = _tiled_store(tmp_path / "s.zarr")
    x0, y0 = 100 - OFFSET[0], 200 - OFFSET[1]
    stored = _geojson(tmp_path / "stored.geojson", {"Tumour": (x0, y0, x0 + 8, y0 + 8)})
    add_masks_from_annotations(store, stored)  # as tiling with annotations would have
    geojson = _geojson(tmp_path / "a.geojson", {"Tumour": (x0, y0, x0 + 128, y0 + 32)})
    torch.manual_seed(0)
    model = PixelCAM(build_encoder("test_resnet", stride8_no_dilation=True), num_classes=2)
    meta = CheckpointMeta(
        ("background", "tumour"), 32, (0.5,) * 3, (0.25,) * 3, 0.5, 32, stage="pixelcam"
    )
    ckpt = save_checkpoint(tmp_path / "m.pt", model, meta)
    result = evaluate(ckpt, [store], EvalRunConfig(device="cpu"), annotations={store: geojson})
    assert result.n_localised == 3 and result.pixelcam is not None
    # the annotations given replace the stored masks
    assert open_patch_store(store).derived_record("masks")["path"] == str(geojson)
    assert open_patch_store(store).group["masks"][...].sum() == 2 * 32 * 16
