"""A slide's stitched heatmap against a ground-truth annotation GeoJSON: PxAP, Dice, IoU.

Pixel metrics compare the heatmap's finest level with the annotations rasterised on the same
grid (a pixel is ground-truth foreground when its centre lies inside an annotation), chunk by
chunk, over the whole slide extent: pixels no patch covered (NaN) count as predicted 0, so
tumour missed by tiling counts against the model. PxAP follows the WSOL protocol of
``PIXELCAM.md`` (thresholds {0, 0.001, ..., 0.999}, precision-recall accumulated over every
pixel); Dice and IoU are exact at the ROI threshold. Polygon IoU compares the ROI polygons
``infer`` writes (same threshold, minimum areas and simplification, read from the heatmap's
provenance) with the union of the annotations, in level-0 pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import shapely

from wsi_pixelcam.errors import AnnotationError, ConfigError, DataError
from wsi_pixelcam.geo.geojson import read_qupath_annotations
from wsi_pixelcam.geo.polygons import polygons_from_chunked_map
from wsi_pixelcam.geo.raster import rasterise
from wsi_pixelcam.metrics import LocalizationAccumulator
from wsi_pixelcam.store.heatmap_store import Heatmap, open_heatmap

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideEvaluation:
    """Scores in percent; pixel counts are heatmap pixels at ``mpp``."""

    heatmap: str
    annotations: str
    threshold: float
    pxap: float
    dice_fg: float
    iou_fg: float
    polygon_iou: float
    n_fg_px: int
    n_bg_px: int
    mpp: float
    gt_area_um2: float
    roi_area_um2: float


def evaluate_slide(
    heatmap_path: str | Path,
    annotations_path: str | Path,
    *,
    threshold: float | None = None,
    classes: Sequence[str] | None = None,
    annotation_frame: Literal["qupath", "level0"] = "qupath",
) -> SlideEvaluation:
    """Score ``heatmap_path`` (a ``heatmap.zarr`` or the infer output folder holding one).

    ``threshold`` defaults to the one infer used (recorded in the heatmap), else 0.5.
    ``classes`` keeps only annotations of those class names (default: every area
    annotation). ``annotation_frame="qupath"`` adds the slide's bounds offset, as QuPath
    exports coordinates in its cropped frame. DataError when no annotation reaches a pixel.
    """
    path = Path(heatmap_path)
    if (path / "heatmap.zarr").is_dir():
        path = path / "heatmap.zarr"
    heatmap = open_heatmap(path)
    prov = heatmap.provenance
    if threshold is None:
        threshold = float(prov.get("threshold", 0.5))
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold {threshold} must be in [0, 1]")
    offset = heatmap.frame_offset_level0 if annotation_frame == "qupath" else (0.0, 0.0)
    truth = _ground_truth(Path(annotations_path), classes, offset)
    to_px = 1.0 / heatmap.level0_per_px
    truth_px = shapely.transform(truth, lambda c: c * to_px)
    histogram, tp, fp, fn = _pixel_counts(heatmap, truth_px, threshold)
    n_fg, n_bg = histogram.pixel_totals()
    if n_fg == 0:
        raise DataError(
            f"{annotations_path}: no annotation covers a heatmap pixel centre at "
            f"{heatmap.mpp:g} um/px; check the classes and the frame (annotation_frame)"
        )
    mpp0 = heatmap.mpp / heatmap.level0_per_px
    predicted = shapely.unary_union(
        polygons_from_chunked_map(
            heatmap.plane(0, 0),
            threshold,
            chunk_px=int(heatmap.levels[0].chunks[1]),
            level0_per_px=heatmap.level0_per_px,
            mpp_level0=mpp0,
            min_area_um2=float(prov.get("min_area_um2", 0.0)),
            min_hole_um2=float(prov.get("min_hole_um2", 0.0)),
            simplify_um=float(prov.get("simplify_um", 0.0)),
        )
    )
    union = shapely.union(predicted, truth).area
    return SlideEvaluation(
        heatmap=str(path),
        annotations=str(annotations_path),
        threshold=threshold,
        pxap=histogram.pxap(),
        dice_fg=100.0 * _ratio(2 * tp, 2 * tp + fp + fn),
        iou_fg=100.0 * _ratio(tp, tp + fp + fn),
        polygon_iou=100.0 * _ratio(shapely.intersection(predicted, truth).area, union),
        n_fg_px=n_fg,
        n_bg_px=n_bg,
        mpp=heatmap.mpp,
        gt_area_um2=float(truth.area) * mpp0**2,
        roi_area_um2=float(predicted.area) * mpp0**2,
    )


def _ground_truth(
    path: Path, classes: Sequence[str] | None, offset: tuple[float, float]
) -> shapely.Geometry:
    """Union of the area annotations (of ``classes``) in full-frame level-0 pixels."""
    annotations = [
        a
        for a in read_qupath_annotations(path, frame_offset_level0=offset)
        if a.object_type == "annotation" and (classes is None or a.class_name in classes)
    ]
    if not annotations:
        raise AnnotationError(
            f"{path}: no area annotation"
            + (f" of class {list(classes)}" if classes is not None else "")
            + "; pass the classes the model's ROIs stand for"
        )
    return shapely.unary_union([a.geometry for a in annotations])


def _pixel_counts(
    heatmap: Heatmap, truth_px: shapely.Geometry, threshold: float
) -> tuple[LocalizationAccumulator, int, int, int]:
    """Map values at truth fg / bg pixels, binned for PxAP, and TP, FP, FN at ``threshold``.

    TP, FP and FN are counted at ``threshold`` itself, not at the nearest binned threshold.
    """
    plane = heatmap.plane(0, 0)
    height, width = plane.shape
    chunk = int(heatmap.levels[0].chunks[1])
    histogram = LocalizationAccumulator()
    tp = fp = fn = 0
    shapely.prepare(truth_px)
    for y0 in range(0, height, chunk):
        for x0 in range(0, width, chunk):
            y1, x1 = min(y0 + chunk, height), min(x0 + chunk, width)
            values = np.nan_to_num(np.asarray(plane[y0:y1, x0:x1], dtype=np.float64), nan=0.0)
            values = np.clip(values, 0.0, 1.0)
            if shapely.intersects(truth_px, shapely.box(x0, y0, x1, y1)):
                fg = rasterise(truth_px, (x0, y0), values.shape)
            else:
                fg = np.zeros(values.shape, dtype=bool)
            histogram.update_pixels(values, fg)
            positive = values >= threshold
            tp += int((positive & fg).sum())
            fp += int((positive & ~fg).sum())
            fn += int((~positive & fg).sum())
    return histogram, tp, fp, fn


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0
