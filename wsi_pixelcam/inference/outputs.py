"""Per-slide inference outputs: the output folder's life cycle, summary.json and GeoJSON features.

Everything for one slide is written into ``OUT/<slide_id>.tmp-<id>/`` and renamed to
``OUT/<slide_id>/`` only when complete, with ``summary.json`` (``"complete": true`` and the
parameters that made it) written last. A crash or a full disk leaves at most a temporary folder,
removed by the next run; an existing folder is only ever one that finished.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_pixelcam.atomic_write import replaced_when_done
from wsi_pixelcam.errors import OutputError
from wsi_pixelcam.geo.geojson import annotation_feature, class_color, tile_feature
from wsi_pixelcam.inference.rois import Roi
from wsi_pixelcam.inference.stitch import overlay_png
from wsi_pixelcam.store.heatmap_store import Heatmap
from wsi_pixelcam.store.patch_store import json_safe

logger = logging.getLogger(__name__)

SUMMARY = "summary.json"
SUMMARY_SCHEMA = "wsi-pixelcam.infer-summary"
SUMMARY_VERSION = 1
AGGREGATION_RULE = (
    "class_probs: mean of the patches' class probabilities weighted by their tissue fraction "
    "(plain mean if every fraction is 0), over patches with finite predictions; "
    "predicted_class: its argmax; max_patch_probs: the largest probability of each class "
    "over patches"
)


def read_complete_summary(slide_dir: Path) -> dict[str, Any] | None:
    """The summary of a finished output folder, or None when there is none."""
    try:
        summary = json.loads((slide_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if (
        isinstance(summary, dict)
        and summary.get("complete") is True
        and summary.get("schema") == SUMMARY_SCHEMA
        and summary.get("schema_version") == SUMMARY_VERSION
    ):
        return summary
    return None


def changed_params(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Names of the parameters whose values differ (compared as JSON)."""
    old, new = json_safe(dict(old)), json_safe(dict(new))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def write_json(path: Path, value: Mapping[str, Any]) -> Path:
    """Write JSON atomically (temp file beside it, then rename)."""
    try:
        with replaced_when_done(path) as tmp:
            tmp.write_text(json.dumps(json_safe(dict(value)), indent=1, allow_nan=False))
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path


def slide_prediction(
    class_probs: np.ndarray, tissue_frac: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Slide-level class probabilities by :data:`AGGREGATION_RULE` (finite rows only)."""
    ok = np.isfinite(class_probs).all(axis=1)
    probs, weights = class_probs[ok].astype(np.float64), tissue_frac[ok].astype(np.float64)
    if weights.sum() <= 0:
        weights = np.ones(len(probs))
    mean = (probs * weights[:, None]).sum(axis=0) / weights.sum()
    return {
        "rule": AGGREGATION_RULE,
        "class_probs": {name: float(p) for name, p in zip(class_names, mean, strict=True)},
        "predicted_class": class_names[int(np.argmax(mean))],
        "max_patch_probs": {
            name: float(p) for name, p in zip(class_names, probs.max(axis=0), strict=True)
        },
        "n_patches": int(ok.sum()),
    }


def roi_features(rois: Sequence[Roi], class_name: str, metadata: Mapping[str, str]) -> list[dict]:
    """QuPath annotation features, largest ROI first."""
    return [
        annotation_feature(
            roi.polygon,
            class_name=class_name,
            name=f"ROI {i + 1}",
            measurements={
                "area_um2": roi.area_um2,
                "mean_prob": roi.mean_prob,
                "max_prob": roi.max_prob,
            },
            metadata=metadata,
        )
        for i, roi in enumerate(rois)
    ]


def tile_features(
    xy_level0: np.ndarray,
    patch_level0: float,
    class_probs: np.ndarray,
    fg_mean: np.ndarray,
    fg_max: np.ndarray,
    tissue_frac: np.ndarray,
    *,
    class_names: Sequence[str],
    roi_index: int,
    frame_offset_level0: tuple[float, float],
) -> list[dict]:
    """One QuPath ``tile`` per patch with finite predictions, classified by its argmax.

    ``prob`` is the probability of the ROI class, the measurement QuPath's Measurement Maps
    colour by; each class's probability and the foreground map's mean and max come with it.
    """
    colours = {name: class_color(name) for name in class_names}
    features = []
    for i in np.flatnonzero(np.isfinite(class_probs).all(axis=1)):
        probs = class_probs[i]
        measurements = {
            "prob": float(probs[roi_index]),
            **{f"prob_{name}": float(p) for name, p in zip(class_names, probs, strict=True)},
            "fg_mean": float(fg_mean[i]),
            "fg_max": float(fg_max[i]),
            "tissue_frac": float(tissue_frac[i]),
        }
        name = class_names[int(np.argmax(probs))]
        features.append(
            tile_feature(
                (float(xy_level0[i, 0]), float(xy_level0[i, 1])),
                (patch_level0, patch_level0),
                class_name=name,
                color=colours[name],
                measurements=measurements,
                frame_offset_level0=frame_offset_level0,
            )
        )
    return features


def write_overlay(
    path: Path,
    thumbnail: np.ndarray | None,
    heatmap: Heatmap,
    width0: int,
    height0: int,
    alpha: float,
) -> None:
    """The foreground channel on the slide's thumbnail, read at the heatmap level nearest its
    size; nothing without a thumbnail."""
    if thumbnail is None:
        return
    level = 0
    for k in range(len(heatmap.levels)):
        if heatmap.levels[k].shape[1] >= thumbnail.shape[0]:
            level = k
    per_px = heatmap.level0_per_px * 2**level
    rows = max(1, min(heatmap.levels[level].shape[1], round(height0 / per_px)))
    cols = max(1, min(heatmap.levels[level].shape[2], round(width0 / per_px)))
    overlay_png(thumbnail, heatmap.plane(level, 0)[:rows, :cols], path, alpha=alpha)
