"""QuPath's GeoJSON import rules: read a file, find the first feature that breaks one.

The rules are those of ``QUPATH_GEOJSON.md``: what QuPath's Gson adapters accept, and where
they fail silently or throw. ``validate-geojson`` and every writer of this package use them.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape

from wsi_pixelcam.errors import AnnotationError

OBJECT_TYPES = ("annotation", "detection", "tile")
SPECIAL_MEASUREMENTS = ("NaN", "Inf", "-Inf")
PRECISION_PX = 0.01  # QuPath >= 0.6 snaps coordinates to this grid on import
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class GeoJsonError(AnnotationError):
    """GeoJSON that QuPath would reject, misread or silently drop."""


def validate_geojson(obj_or_path: Any) -> None:
    """Raise GeoJsonError naming the first feature (index, id) that breaks a QuPath rule.

    Accepts a parsed object or a path to a ``.geojson`` / ``.geojson.gz`` file.
    """
    if isinstance(obj_or_path, (str, Path)):
        validate_geojson_file(obj_or_path)
    else:
        validate_features(obj_or_path, "GeoJSON")


def validate_geojson_file(path: str | Path) -> None:
    """Validate a ``.geojson`` or ``.geojson.gz`` file (see :func:`validate_geojson`)."""
    validate_features(load_geojson(Path(path)), str(path))


def load_geojson(path: Path) -> Any:
    """Parse a ``.geojson`` or ``.geojson.gz`` file; GeoJsonError names it when unreadable."""
    try:
        with path.open("rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        opener = gzip_module.open if gzipped else open
        with opener(path, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, EOFError) as exc:
        raise GeoJsonError(f"{path}: cannot read GeoJSON ({exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GeoJsonError(f"{path}: not valid JSON ({exc})") from exc


def features_of(obj: Any, source: str) -> list[Any]:
    """The features of a FeatureCollection, an array of features or one Feature."""
    if isinstance(obj, list):
        return obj
    if isinstance(obj, Mapping):
        if obj.get("type") == "FeatureCollection":
            features = obj.get("features")
            if isinstance(features, list):
                return features
            raise GeoJsonError(f"{source}: FeatureCollection without a 'features' array")
        if obj.get("type") == "Feature":
            return [obj]
    raise GeoJsonError(
        f"{source}: top level must be a FeatureCollection, an array of features or one Feature"
    )


def validate_features(obj: Any, source: str) -> None:
    """Raise GeoJsonError naming ``source`` and the first feature that breaks a rule.

    Structure (types, ids, rings, properties) is checked feature by feature; the geometric
    rules (valid, still valid after QuPath's snapping, no zero-area part) run vectorised in
    GEOS over every feature up to the first structural problem, because a slide's
    ``tiles.geojson`` holds one feature per patch.
    """
    features = features_of(obj, source)
    first: tuple[int, str] | None = None
    shaped: list[int] = []  # features whose geometry is well-formed, in order
    for index, feature in enumerate(features):
        problem, geometry_ok = _structure_problem(feature)
        if geometry_ok:
            shaped.append(index)
        if problem is not None:
            first = (index, problem)
            break
    invalid = _first_invalid_geometry([features[i]["geometry"] for i in shaped])
    if invalid is not None and (first is None or shaped[invalid[0]] <= first[0]):
        first = (shaped[invalid[0]], invalid[1])  # a feature's geometry comes before its props
    if first is not None:
        index, problem = first
        feature = features[index]
        fid = feature.get("id") if isinstance(feature, Mapping) else None
        raise GeoJsonError(f"{source}: feature {index} (id {fid!r}): {problem}")


def _structure_problem(feature: Any) -> tuple[str | None, bool]:
    """The first structural rule ``feature`` breaks (or None), and whether its geometry is
    well-formed enough for the geometric rules."""
    if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
        return "type must be 'Feature'", False
    fid = feature.get("id")
    if fid is not None and not (isinstance(fid, str) and _UUID.match(fid)):
        # no id is fine (QuPath assigns one); another id is dropped, so it is flagged
        return "id must be a UUID string (QuPath drops other ids)", False
    problem = _geometry_structure_problem(feature.get("geometry"))
    if problem is not None:
        return problem, False
    props = feature.get("properties")
    if not isinstance(props, Mapping):
        return "properties must be an object", True
    return _properties_problem(props), True


def _geometry_structure_problem(geometry: Any) -> str | None:
    if not isinstance(geometry, Mapping) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        return "geometry type must be Polygon or MultiPolygon"
    coords = geometry.get("coordinates")
    polygons = [coords] if geometry["type"] == "Polygon" else coords
    if not isinstance(polygons, (list, tuple)) or not polygons:
        return "geometry coordinates must be a non-empty array"
    if geometry["type"] == "MultiPolygon" and len(polygons) == 1:
        return "MultiPolygon with a single part; write a Polygon"
    for polygon in polygons:
        if not isinstance(polygon, (list, tuple)) or not polygon:
            return "each polygon must be a non-empty array of rings"
        for ring in polygon:
            problem = _ring_problem(ring)
            if problem is not None:
                return problem
    return None


def _first_invalid_geometry(geometries: list[Mapping[str, Any]]) -> tuple[int, str] | None:
    """Position and problem of the first geometry QuPath would reject or damage, or None."""
    if not geometries:
        return None
    shapes = np.array([shape(g) for g in geometries], dtype=object)
    snapped = shapely.set_precision(shapes, PRECISION_PX, mode="pointwise")
    parts, owner = shapely.get_parts(snapped, return_index=True)
    degenerate = np.bincount(owner, minlength=len(shapes))[: len(shapes)] == 0
    degenerate[owner[shapely.is_empty(parts) | (shapely.area(parts) <= 0)]] = True
    bad = ~shapely.is_valid(shapes) | ~shapely.is_valid(snapped) | degenerate
    if not bad.any():
        return None
    index = int(np.argmax(bad))
    if not shapely.is_valid(shapes[index]):
        return index, f"invalid polygon ({shapely.is_valid_reason(shapes[index])})"
    if not shapely.is_valid(snapped[index]):
        reason = shapely.is_valid_reason(snapped[index])
        return index, f"invalid after QuPath's {PRECISION_PX} px snapping ({reason})"
    return index, "empty or zero-area polygon"


def _ring_problem(ring: Any) -> str | None:
    if not isinstance(ring, (list, tuple)) or len(ring) < 4:
        return "each ring needs at least 4 positions"
    for position in ring:
        if (
            not isinstance(position, (list, tuple))
            or len(position) not in (2, 3)
            or not all(_is_finite_number(v) for v in position)
        ):
            return f"position {position!r} must be [x, y] finite numbers"
    if list(ring[0]) != list(ring[-1]):
        return "ring not closed (first and last positions differ)"
    return None


def _properties_problem(props: Mapping[str, Any]) -> str | None:
    if "type" in props:
        return "properties must not contain 'type' (QuPath reads it as the object type)"
    if props.get("objectType") not in OBJECT_TYPES:
        return (
            f"properties.objectType must be one of {OBJECT_TYPES}, got {props.get('objectType')!r}"
        )
    if "name" in props and not isinstance(props["name"], str):
        return "properties.name must be a string"
    if "isLocked" in props and not isinstance(props["isLocked"], bool):
        return "properties.isLocked must be true or false"
    if "classification" in props:
        cls = props["classification"]
        if not isinstance(cls, Mapping) or not isinstance(cls.get("name"), str) or not cls["name"]:
            return "classification must be an object with a non-empty 'name'"
        color = cls.get("color")
        if (
            not isinstance(color, (list, tuple))
            or len(color) != 3
            or not all(_is_byte(c) for c in color)
        ):
            return "classification.color must be [r, g, b] integers 0-255 (QuPath fails without it)"
    measurements = props.get("measurements", {})
    if not isinstance(measurements, Mapping):
        return "measurements must be an object of name -> number"
    for key, value in measurements.items():
        if not (_is_finite_number(value) or value in SPECIAL_MEASUREMENTS):
            return f"measurement {key!r} must be a finite number or one of {SPECIAL_MEASUREMENTS}"
    metadata = props.get("metadata", {})
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        return "metadata must be an object of string -> string"
    return None


def _is_byte(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
