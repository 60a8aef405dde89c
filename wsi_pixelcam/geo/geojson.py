"""QuPath GeoJSON: build features, write them atomically, read annotations back.

:func:`write_geojson` checks every rule of :mod:`wsi_pixelcam.geo.qupath_rules` first and
refuses to write a file that breaks one.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import logging
import math
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from wsi_pixelcam.atomic_write import replaced_when_done
from wsi_pixelcam.errors import AnnotationError, OutputError
from wsi_pixelcam.geo.polygons import polygon_parts
from wsi_pixelcam.geo.qupath_rules import (
    OBJECT_TYPES,
    PRECISION_PX,
    GeoJsonError,
    features_of,
    load_geojson,
    validate_features,
)

logger = logging.getLogger(__name__)

# QuPath's built-in class colours, so familiar classes look as they do in QuPath.
_QUPATH_COLOURS = {
    "tumor": (200, 0, 0),
    "stroma": (150, 200, 150),
    "immune cells": (160, 90, 160),
    "necrosis": (50, 50, 50),
    "other": (255, 200, 0),
    "region*": (0, 0, 180),
    "ignore*": (180, 180, 180),
    "positive": (200, 50, 50),
    "negative": (112, 112, 225),
}
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0),
)  # fmt: skip


@dataclass(frozen=True)
class Annotation:
    """One area annotation read from GeoJSON, in level-0 pixels of the full frame."""

    class_name: str | None
    geometry: Polygon | MultiPolygon
    object_type: str


def class_color(class_name: str) -> tuple[int, int, int]:
    """QuPath's colour for its built-in classes, else a fixed palette colour by name hash."""
    known = _QUPATH_COLOURS.get(class_name.lower())
    if known is not None:
        return known
    return _PALETTE[zlib.crc32(class_name.encode("utf-8")) % len(_PALETTE)]


def annotation_feature(
    geometry: BaseGeometry | Mapping[str, Any],
    *,
    class_name: str,
    color: tuple[int, int, int] | None = None,
    name: str | None = None,
    measurements: Mapping[str, float] | None = None,
    metadata: Mapping[str, object] | None = None,
    object_type: str = "annotation",
) -> dict[str, Any]:
    """A QuPath feature for an area ROI, in output-frame pixels.

    The geometry is repaired (``make_valid``), snapped to the 0.01 px grid, stripped of
    zero-area parts and written as a ``Polygon`` when one part remains. ``color`` defaults
    to :func:`class_color`; measurements must be finite numbers; metadata values are
    stringified. Raises GeoJsonError for anything QuPath cannot import.
    """
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": _qupath_geometry(geometry),
        "properties": _properties(object_type, class_name, color, name, measurements, metadata),
    }


def _properties(
    object_type: str,
    class_name: str,
    color: tuple[int, int, int] | None,
    name: str | None,
    measurements: Mapping[str, float] | None,
    metadata: Mapping[str, object] | None,
) -> dict[str, Any]:
    if object_type not in OBJECT_TYPES:
        raise GeoJsonError(f"objectType {object_type!r} is not one of {OBJECT_TYPES}")
    properties: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        properties["name"] = str(name)
    rgb = class_color(class_name) if color is None else color
    properties["classification"] = {"name": class_name, "color": [int(c) for c in rgb]}
    if measurements:
        values = {}
        for key, value in measurements.items():
            number = float(value)
            if not math.isfinite(number):
                raise GeoJsonError(f"measurement {key!r} is {value!r}; measurements must be finite")
            values[str(key)] = number
        properties["measurements"] = values
    if metadata:
        properties["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    return properties


def tile_feature(
    xy_level0: tuple[float, float],
    wh_level0: tuple[float, float],
    *,
    class_name: str,
    color: tuple[int, int, int] | None = None,
    measurements: Mapping[str, float] | None = None,
    metadata: Mapping[str, object] | None = None,
    frame_offset_level0: tuple[float, float] = (0.0, 0.0),
    object_type: str = "tile",
) -> dict[str, Any]:
    """A per-patch ``tile`` feature (QuPath's Measurement Maps colour tiles by a measurement).

    ``xy_level0`` is the patch's top-left in the full level-0 frame; ``frame_offset_level0``
    is subtracted, as for ROIs.
    """
    # a rectangle needs no repair: snap its corners to QuPath's grid and write them directly
    x0 = round(xy_level0[0] - frame_offset_level0[0], 2)
    y0 = round(xy_level0[1] - frame_offset_level0[1], 2)
    x1 = round(xy_level0[0] + wh_level0[0] - frame_offset_level0[0], 2)
    y1 = round(xy_level0[1] + wh_level0[1] - frame_offset_level0[1], 2)
    if not (x1 > x0 and y1 > y0):
        raise GeoJsonError(
            f"tile at {xy_level0} of size {wh_level0} has no area on the {PRECISION_PX} px grid"
        )
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]  # the order orient_polygons gives
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": _properties(object_type, class_name, color, None, measurements, metadata),
    }


def feature_collection(features: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Wrap features in the ``FeatureCollection`` QuPath expects."""
    return {"type": "FeatureCollection", "features": [dict(f) for f in features]}


def write_geojson(
    path: str | Path,
    features_or_collection: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    gzip: bool | None = None,
) -> Path:
    """Validate, then write atomically (temp file in the same folder, then ``os.replace``).

    ``gzip=None`` compresses when the name ends in ``.gz``; ``gzip=True`` appends ``.gz`` if
    missing. Returns the path written. Raises GeoJsonError before writing anything invalid,
    OutputError when the folder cannot be written.
    """
    path = Path(path)
    compress = path.suffix == ".gz" if gzip is None else gzip
    if compress and path.suffix != ".gz":
        path = path.with_name(path.name + ".gz")
    if isinstance(features_or_collection, Mapping):
        collection = dict(features_or_collection)
    else:
        collection = feature_collection(features_or_collection)
    if collection.get("type") != "FeatureCollection":
        raise GeoJsonError(
            f"{path}: write a FeatureCollection (got type {collection.get('type')!r})"
        )
    validate_features(collection, str(path))
    text = json.dumps(collection, allow_nan=False, separators=(",", ":"))
    try:
        with replaced_when_done(path) as tmp:
            if compress:
                with gzip_module.open(tmp, "wt", encoding="utf-8") as fh:
                    fh.write(text)
            else:
                tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write GeoJSON ({exc.strerror or exc})") from exc
    return path


def read_qupath_annotations(
    path: str | Path, *, frame_offset_level0: tuple[float, float] = (0.0, 0.0)
) -> list[Annotation]:
    """Area annotations from a QuPath export (FeatureCollection, array, Feature, ``.gz``).

    Classification may be ``{"name"}``, ``{"names": [...]}`` (joined with ``": "`` as QuPath
    shows derived classes) or a plain string. Points and lines are skipped (and counted in
    the log); invalid polygons are repaired with ``make_valid``. ``frame_offset_level0`` is
    added, to bring annotations drawn in QuPath's cropped frame into the full level-0 frame.
    Raises AnnotationError for malformed JSON or when no area annotation is found.
    """
    path = Path(path)
    features = features_of(load_geojson(path), str(path))
    annotations: list[Annotation] = []
    skipped = repaired = 0
    dx, dy = frame_offset_level0
    for index, feature in enumerate(features):
        where = f"{path}: feature {index}"
        if not isinstance(feature, Mapping):
            raise AnnotationError(f"{where}: not a JSON object")
        geometry = feature.get("geometry")
        if not isinstance(geometry, Mapping) or geometry.get("type") not in (
            "Polygon",
            "MultiPolygon",
            "GeometryCollection",
        ):
            skipped += 1
            continue
        try:
            geom = shape(geometry)
        except (GEOSException, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise AnnotationError(f"{where}: unreadable geometry ({exc})") from exc
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
            repaired += 1
        parts = [p for p in polygon_parts(geom) if p.area > 0]
        if not parts:
            skipped += 1
            continue
        merged = shapely.unary_union(parts) if len(parts) > 1 else parts[0]
        props = feature.get("properties")
        props = props if isinstance(props, Mapping) else {}
        object_type = props.get("objectType", props.get("object_type", props.get("type")))
        annotations.append(
            Annotation(
                class_name=_class_name(props.get("classification"), where),
                geometry=shapely.transform(merged, lambda c: c + np.array([dx, dy])),
                object_type=str(object_type) if object_type else "annotation",
            )
        )
    if skipped or repaired:
        logger.info(
            "%s: %d area annotations read, %d features without area skipped, %d repaired",
            path, len(annotations), skipped, repaired,
        )  # fmt: skip
    if not annotations:
        raise AnnotationError(
            f"{path}: no polygon annotations among {len(features)} features "
            f"({skipped} points, lines or empty shapes skipped); export area annotations"
        )
    return annotations


def _qupath_geometry(geometry: BaseGeometry | Mapping[str, Any]) -> dict[str, Any]:
    geom = geometry if isinstance(geometry, BaseGeometry) else shape(geometry)
    snapped = shapely.set_precision(shapely.make_valid(geom), PRECISION_PX)
    parts = [p for p in polygon_parts(snapped) if p.area > 0]
    if not parts:
        raise GeoJsonError(
            f"{geom.geom_type} has no area after snapping to QuPath's {PRECISION_PX} px grid"
        )
    out = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    return dict(mapping(shapely.orient_polygons(out)))


def _class_name(classification: Any, where: str) -> str | None:
    if classification is None or isinstance(classification, str):
        return classification or None
    if isinstance(classification, Mapping):
        names = classification.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return ": ".join(names)
        name = classification.get("name")
        if isinstance(name, str) and name:
            return name
    raise AnnotationError(f"{where}: classification {classification!r} has no class name")
