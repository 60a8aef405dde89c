"""Slide-level evaluation of a stitched heatmap against annotation GeoJSON, with exact oracles."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import shapely
import tiny_pixelcam as tiny

from wsi_pixelcam.config import InferConfig, TileConfig
from wsi_pixelcam.errors import AnnotationError, ConfigError, DataError
from wsi_pixelcam.geo.geojson import annotation_feature, write_geojson
from wsi_pixelcam.inference.evaluate_slide import evaluate_slide
from wsi_pixelcam.inference.infer import infer_slide
from wsi_pixelcam.inference.predict import InferenceModel
from wsi_pixelcam.metrics import LocalizationAccumulator
from wsi_pixelcam.store.heatmap_store import Block, HeatmapStore
from wsi_pixelcam.tiling import tile_slide

SCALE = 4.0  # level-0 px per heatmap px
SIZE = 96  # heatmap side, px
OFFSET = (100.0, 40.0)  # the slide's bounds offset (QuPath's cropped frame)


def _heatmap(tmp_path: Path, values: np.ndarray, **provenance) -> Path:
    """A finished heatmap holding ``values`` (NaN = not covered) at 0.5 um/px level 0."""
    store = HeatmapStore.create(
        tmp_path / "heatmap.zarr", values.shape, 2.0, level0_per_px=SCALE,
        frame_offset_level0=OFFSET, chunk_px=32,
        provenance={"threshold": 0.5, "min_area_um2": 0.0, **provenance},
    )  # fmt: skip
    covered = ~np.isnan(values)
    store.add([Block(0, 0, np.nan_to_num(values)[None], covered.astype(np.float32))])
    return store.finalize()


def _annotations(path: Path, boxes_px, frame_shift=OFFSET, class_name="Tumor") -> Path:
    """Boxes given in heatmap px, written in level-0 px of QuPath's frame."""
    features = [
        annotation_feature(
            shapely.box(*(v * SCALE for v in b)).buffer(0),
            class_name=class_name,
        )
        for b in boxes_px
    ]
    moved = [
        {**f, "geometry": shapely.geometry.mapping(
            shapely.transform(shapely.geometry.shape(f["geometry"]), lambda c: c - frame_shift)
        )}
        for f in features
    ]  # fmt: skip
    return write_geojson(path, moved)


def _box_mask(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_pixel_scores_match_the_patch_level_metrics_on_the_same_pixels(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    values = 0.5 + 0.45 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 0.02, (SIZE, SIZE))
    values = np.clip(values, 0, 1)
    values[:, :10] = np.nan  # not covered by any patch: counts as 0
    gt_boxes = [(20, 8, 50, 40), (60, 50, 90, 90)]
    heatmap = _heatmap(tmp_path, values.astype(np.float32))
    result = evaluate_slide(heatmap, _annotations(tmp_path / "gt.geojson", gt_boxes))
    truth = _box_mask(gt_boxes[0]) | _box_mask(gt_boxes[1])
    filled = np.nan_to_num(values.astype(np.float32), nan=0.0).astype(np.float64)
    reference = LocalizationAccumulator(eval_px=SIZE)
    reference.update(filled, truth)
    assert result.pxap == pytest.approx(reference.pxap(), abs=1e-9)
    positive = filled >= 0.5
    tp, fp = (positive & truth).sum(), (positive & ~truth).sum()
    fn = (~positive & truth).sum()
    assert result.dice_fg == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    assert result.iou_fg == pytest.approx(100 * tp / (tp + fp + fn))
    assert (result.n_fg_px, result.n_bg_px) == (truth.sum(), (~truth).sum())
    assert result.gt_area_um2 == pytest.approx(truth.sum() * 4.0)  # 2 um/px heatmap pixels


def test_polygon_iou_of_overlapping_boxes_is_exact(tmp_path):
    predicted, truth = (10, 10, 50, 40), (30, 20, 70, 60)
    values = np.where(_box_mask(predicted), 0.9, 0.1).astype(np.float32)
    heatmap = _heatmap(tmp_path, values)
    result = evaluate_slide(heatmap, _annotations(tmp_path / "gt.geojson", [truth]))
    inter = 20 * 20
    union = 40 * 30 + 40 * 40 - inter
    assert result.polygon_iou == pytest.approx(100 * inter / union)
    assert result.dice_fg == pytest.approx(100 * 2 * inter / (40 * 30 + 40 * 40))
    assert result.roi_area_um2 == pytest.approx(40 * 30 * 4.0)
    assert result.threshold == 0.5  # read from the heatmap's provenance


def test_annotation_frame_and_class_filter(tmp_path):
    box = (10, 10, 50, 40)
    heatmap = _heatmap(tmp_path, np.where(_box_mask(box), 0.9, 0.1).astype(np.float32))
    in_level0 = _annotations(tmp_path / "l0.geojson", [box], frame_shift=(0.0, 0.0))
    assert evaluate_slide(heatmap, in_level0, annotation_frame="level0").polygon_iou == 100.0
    assert evaluate_slide(heatmap, in_level0).polygon_iou < 100.0  # shifted by the offset
    qupath = _annotations(tmp_path / "q.geojson", [box], class_name="Stroma")
    assert evaluate_slide(heatmap, qupath, classes=["Stroma"]).dice_fg == 100.0
    with pytest.raises(AnnotationError, match="no area annotation of class"):
        evaluate_slide(heatmap, qupath, classes=["Tumor"])


def test_unusable_inputs(tmp_path):
    heatmap = _heatmap(tmp_path, np.full((SIZE, SIZE), 0.3, np.float32))
    outside = _annotations(tmp_path / "far.geojson", [(200, 200, 240, 240)])
    with pytest.raises(DataError, match="no annotation covers a heatmap pixel"):
        evaluate_slide(heatmap, outside)
    inside = _annotations(tmp_path / "gt.geojson", [(0, 0, 10, 10)])
    with pytest.raises(ConfigError, match=r"threshold 1\.5"):
        evaluate_slide(heatmap, inside, threshold=1.5)


def test_an_infer_output_folder_scores_perfectly_against_its_tissue_box(slides, layout, tmp_path):
    store = tile_slide(
        slides["svs"], TileConfig(target_mpp=tiny.MPP, patch_px=tiny.PATCH_PX), tmp_path / "s"
    ).store_path
    model = InferenceModel(tiny.constant_model(0.8), tiny.meta())
    infer_slide(store, model, InferConfig(num_workers=0, threshold=0.5), tmp_path / "out")
    gt = write_geojson(
        tmp_path / "gt.geojson", [annotation_feature(shapely.box(*layout.box), class_name="Tumor")]
    )
    result = evaluate_slide(tmp_path / "out" / "svs_slide", gt)
    assert (result.pxap, result.dice_fg, result.polygon_iou) == (100.0, 100.0, 100.0)
