"""Patch labels from QuPath annotations, a CSV of points, or one label per slide.

Annotation rule: a patch takes the class whose ROIs cover the largest fraction of it if that
fraction is at least ``min_coverage``; otherwise ``background_class`` (class 0) when set, else
-1 (unlabelled). ``roi_coverage`` is the fraction of the patch covered by any annotated ROI and
``rois`` their union, from which tiling rasterises the patches' pixel masks for evaluation.
Annotations are in QuPath's frame (level 0 minus the bounds offset). Class names that differ
only in case (``tumor`` in a manifest, ``Tumor`` in QuPath) are one class (:func:`spellings`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from wsi_pixelcam.config import LabelConfig
from wsi_pixelcam.errors import AnnotationError
from wsi_pixelcam.geo.geojson import Annotation, read_qupath_annotations

log = logging.getLogger(__name__)

UNLABELLED = -1


@dataclass(frozen=True)
class PatchLabels:
    """Per-patch labels aligned with a grid, plus where they came from."""

    labels: np.ndarray  # (N,) int16, -1 unlabelled
    roi_coverage: np.ndarray  # (N,) float32
    classes: list[str]
    source: dict[str, str] = field(default_factory=dict)
    rois: shapely.Geometry | None = None  # union of the ROIs, QuPath frame; annotations only


def unlabelled(n: int) -> PatchLabels:
    return PatchLabels(
        np.full(n, UNLABELLED, np.int16), np.zeros(n, np.float32), [], {"kind": "none"}
    )


def spellings(
    names: Iterable[str], preferred: Iterable[str | None] = (), origin: str = "labels"
) -> dict[str, str]:
    """Each of ``names`` mapped to the one spelling of its class: names equal but for case are
    one class. A spelling in ``preferred`` (the configured classes) wins, else the first in
    sorted order; a class written several ways is logged once, naming every spelling."""
    chosen: dict[str, str] = {}
    for name in preferred:
        if name is not None:
            chosen.setdefault(name.casefold(), name)
    seen: dict[str, set[str]] = {}
    for name in sorted(set(names)):
        seen.setdefault(name.casefold(), set()).add(name)
        chosen.setdefault(name.casefold(), name)
    for key, variants in seen.items():
        if len(variants | {chosen[key]}) > 1:
            log.warning(
                "%s: class names %s differ only in case: one class, %r",
                origin, sorted(variants | {chosen[key]}), chosen[key],
            )  # fmt: skip
    return {name: chosen[name.casefold()] for key in seen for name in seen[key]}


def class_index(classes: Sequence[str], name: str) -> int:
    """Index of ``name`` in ``classes``, ignoring case; -1 when absent."""
    folded = [c.casefold() for c in classes]
    key = name.casefold()
    return folded.index(key) if key in folded else UNLABELLED


def _preferred(cfg: LabelConfig) -> list[str | None]:
    """The spellings a configuration asks for: its classes and its background class."""
    return [*(cfg.classes or ()), cfg.background_class]


def _class_list(found: Sequence[str], cfg: LabelConfig, origin: str) -> list[str]:
    """The classes of labels named ``found`` (any spelling)."""
    return _classes_of(set(spellings(found, _preferred(cfg), origin).values()), cfg, origin)


def _classes_of(spelled: set[str], cfg: LabelConfig, origin: str) -> list[str]:
    """The classes, in label order, of names already spelled one way per class."""
    found = sorted(spelled)
    if cfg.classes is not None:
        unknown = sorted(set(found) - set(cfg.classes))
        if unknown:
            raise AnnotationError(
                f"{origin}: classes {unknown} are not in labels.classes {cfg.classes}"
            )
        return list(cfg.classes)
    names = sorted(set(found) - {cfg.background_class})
    return ([cfg.background_class] if cfg.background_class else []) + names


def roi_union(annotations: Sequence[Annotation], background_class: str | None) -> shapely.Geometry:
    """The area of every classified annotation but the background class: the masks' foreground.

    Empty (all-zero masks) when every annotation is of the background class.
    """
    background = background_class.casefold() if background_class else None
    return shapely.union_all(
        [a.geometry for a in annotations if a.class_name and a.class_name.casefold() != background]
    )


def labels_from_annotations(
    path: Path,
    xy_level0: np.ndarray,
    patch_level0: float,
    slide_size: tuple[int, int],
    frame_offset: tuple[int, int],
    cfg: LabelConfig,
) -> PatchLabels:
    """Label patches by the area each annotated class covers."""
    annotations = [a for a in read_qupath_annotations(path) if a.class_name]
    if not annotations:
        raise AnnotationError(f"{path}: no classified area annotations to label patches from")
    spelled = spellings(
        [a.class_name for a in annotations if a.class_name], _preferred(cfg), str(path)
    )
    by_class: dict[str, shapely.Geometry] = {}
    for ann in annotations:
        assert ann.class_name is not None
        name = spelled[ann.class_name]
        prev = by_class.get(name)
        by_class[name] = ann.geometry if prev is None else shapely.union(prev, ann.geometry)
    frame = shapely.box(
        -frame_offset[0],
        -frame_offset[1],
        slide_size[0] - frame_offset[0],
        slide_size[1] - frame_offset[1],
    )
    if not any(shapely.intersects(g, frame) for g in by_class.values()):
        raise AnnotationError(
            f"{path}: no annotation overlaps the slide ({slide_size[0]}x{slide_size[1]} px, "
            f"frame offset {frame_offset}); is it another slide's annotation file, "
            "or in another frame?"
        )
    classes = _classes_of(set(by_class), cfg, str(path))
    x0 = xy_level0[:, 0].astype(np.float64) - frame_offset[0]
    y0 = xy_level0[:, 1].astype(np.float64) - frame_offset[1]
    boxes = shapely.box(x0, y0, x0 + patch_level0, y0 + patch_level0)
    area = patch_level0 * patch_level0
    coverage = np.zeros((len(classes), len(boxes)), np.float64)
    for name, geom in by_class.items():
        if name == cfg.background_class:
            continue
        shapely.prepare(geom)
        coverage[classes.index(name)] = shapely.area(shapely.intersection(boxes, geom)) / area
    all_rois = roi_union(annotations, cfg.background_class)
    roi_coverage = (
        shapely.area(shapely.intersection(boxes, all_rois)) / area if len(boxes) else np.zeros(0)
    )
    best = coverage.argmax(axis=0) if len(boxes) else np.zeros(0, np.int64)
    best_cov = coverage.max(axis=0) if len(boxes) else np.zeros(0)
    fallback = (
        classes.index(cfg.background_class) if cfg.background_class in classes else UNLABELLED
    )
    labels = np.where(best_cov >= cfg.min_coverage, best, fallback).astype(np.int16)
    return PatchLabels(
        labels,
        np.asarray(roi_coverage, np.float32),
        classes,
        {"kind": "annotations", "path": str(path), "min_coverage": str(cfg.min_coverage)},
        all_rois,
    )


def read_label_csv(path: Path) -> dict[str, list[tuple[int, int, str]]]:
    """Rows of a (slide, x, y, label) CSV grouped by slide id (x, y are level-0 pixels)."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"slide", "x", "y", "label"} - set(reader.fieldnames or [])
            if missing:
                raise AnnotationError(f"{path}: label CSV lacks columns {sorted(missing)}")
            rows: dict[str, list[tuple[int, int, str]]] = {}
            for line_no, row in enumerate(reader, start=2):
                try:
                    point = (int(float(row["x"])), int(float(row["y"])), row["label"].strip())
                except (TypeError, ValueError) as exc:
                    raise AnnotationError(f"{path}:{line_no}: bad x/y ({exc})") from exc
                rows.setdefault(Path(row["slide"]).stem if row["slide"] else "", []).append(point)
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read label CSV ({exc.strerror or exc})") from exc
    return rows


def labels_from_points(
    points: Sequence[tuple[int, int, str]],
    xy_level0: np.ndarray,
    patch_level0: float,
    cfg: LabelConfig,
    origin: str,
) -> PatchLabels:
    """Each point labels the patch containing it whose top-left is nearest."""
    classes = _class_list([p[2] for p in points], cfg, origin)
    labels = np.full(xy_level0.shape[0], UNLABELLED, np.int16)
    unmatched = 0
    for x, y, name in points:
        dx, dy = x - xy_level0[:, 0], y - xy_level0[:, 1]
        inside = np.flatnonzero((dx >= 0) & (dy >= 0) & (dx < patch_level0) & (dy < patch_level0))
        if inside.size == 0:
            unmatched += 1
            continue
        labels[inside[np.argmin(dx[inside] ** 2 + dy[inside] ** 2)]] = class_index(classes, name)
    if unmatched:
        log.warning("%s: %d label points fall on no kept patch", origin, unmatched)
    return PatchLabels(
        labels, np.zeros(xy_level0.shape[0], np.float32), classes, {"kind": "csv", "path": origin}
    )


def labels_from_slide_label(n: int, label: str, cfg: LabelConfig) -> PatchLabels:
    """Every patch takes the slide's label (weak, slide-level supervision)."""
    classes = _class_list([label], cfg, "manifest")
    return PatchLabels(
        np.full(n, class_index(classes, label), np.int16),
        np.zeros(n, np.float32),
        classes,
        {"kind": "slide", "label": label},
    )


@dataclass(frozen=True)
class LabelSource:
    """Where a slide's patch labels come from (at most one of the three)."""

    annotations: Path | None = None
    points: tuple[tuple[int, int, str], ...] | None = None
    slide_label: str | None = None

    def describe(self) -> str:
        if self.annotations is not None:
            return f"annotations {self.annotations}"
        if self.points is not None:
            return f"{len(self.points)} CSV points"
        if self.slide_label is not None:
            return f"slide label {self.slide_label!r}"
        return "none"


def compute_labels(
    source: LabelSource,
    xy_level0: np.ndarray,
    patch_level0: float,
    slide_size: tuple[int, int],
    frame_offset: tuple[int, int],
    cfg: LabelConfig,
    origin: str,
) -> PatchLabels:
    """Dispatch to the rule for ``source``; no source gives unlabelled patches."""
    if source.annotations is not None:
        return labels_from_annotations(
            source.annotations, xy_level0, patch_level0, slide_size, frame_offset, cfg
        )
    if source.points is not None:
        return labels_from_points(source.points, xy_level0, patch_level0, cfg, origin)
    if source.slide_label is not None:
        return labels_from_slide_label(xy_level0.shape[0], source.slide_label, cfg)
    return unlabelled(xy_level0.shape[0])
