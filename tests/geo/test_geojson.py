"""QuPath GeoJSON: every import rule enforced, what we write passes, what QuPath writes reads."""

from __future__ import annotations

import copy
import gzip
import json
import logging
import uuid

import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from wsi_pixelcam.errors import AnnotationError
from wsi_pixelcam.geo.geojson import (
    Annotation,
    annotation_feature,
    class_color,
    feature_collection,
    read_qupath_annotations,
    tile_feature,
    write_geojson,
)
from wsi_pixelcam.geo.qupath_rules import GeoJsonError, validate_geojson, validate_geojson_file

SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
HOLE = [[2, 2], [2, 4], [4, 4], [4, 2], [2, 2]]


def _feature(**props) -> dict:
    properties = {
        "objectType": "annotation",
        "classification": {"name": "Tumor", "color": [200, 0, 0]},
        "measurements": {"area_um2": 6.0, "prob": "NaN"},
        "metadata": {"model": "m", "threshold": "0.5"},
    }
    properties.update(props)
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": [SQUARE, HOLE]},
        "properties": properties,
    }


_DELETE = object()


def _set(path: str, value):
    """Mutator setting a dotted key of the second feature (``_DELETE`` removes the key)."""

    def mutate(collection: dict) -> None:
        node = collection["features"][1]
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value

    return mutate


_SPIKE = [[0, 0], [10, 0], [10, 10], [5, 0.003], [0, 10], [0, 0]]  # touches itself once snapped

RULES = [
    ("feature type", _set("type", "Polygon"), "type must be 'Feature'"),
    ("non-UUID id", _set("id", "roi-1"), "UUID"),
    ("integer id", _set("id", 7), "UUID"),
    ("point geometry", _set("geometry", {"type": "Point", "coordinates": [1, 2]}), "Polygon or"),
    ("no geometry", _set("geometry", None), "Polygon or MultiPolygon"),
    ("empty coordinates", _set("geometry.coordinates", []), "non-empty"),
    ("short ring", _set("geometry.coordinates", [[[0, 0], [1, 1], [0, 0]]]), "at least 4"),
    (
        "string position",
        _set("geometry.coordinates", [[[0, 0], [1, 0], ["a", 1], [0, 0]]]),
        "finite",
    ),
    (
        "nan position",
        _set("geometry.coordinates", [[[0, 0], [1, 0], [float("nan"), 1], [0, 0]]]),
        "finite",
    ),
    ("open ring", _set("geometry.coordinates", [[*SQUARE[:-1], [0, 5]]]), "not closed"),
    (
        "one-part MultiPolygon",
        _set("geometry", {"type": "MultiPolygon", "coordinates": [[SQUARE]]}),
        "single part",
    ),
    (
        "bow-tie",
        _set("geometry.coordinates", [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]),
        "invalid polygon",
    ),
    (
        "zero area",
        _set("geometry.coordinates", [[[0, 0], [5, 0], [9, 0], [0, 0]]]),
        "invalid polygon",
    ),
    (
        "hole outside shell",
        _set("geometry.coordinates", [SQUARE, [[20, 20], [20, 30], [30, 30], [20, 20]]]),
        "invalid polygon",
    ),
    ("invalid once snapped", _set("geometry.coordinates", [_SPIKE]), "snapping"),
    (
        "collapses once snapped",
        _set("geometry.coordinates", [[[0, 0], [0.001, 0], [0.001, 0.001], [0, 0.001], [0, 0]]]),
        "snapping",
    ),
    ("no properties", _set("properties", _DELETE), "properties must be an object"),
    ("no objectType", _set("properties.objectType", _DELETE), "objectType"),
    ("unknown objectType", _set("properties.objectType", "roi"), "objectType"),
    ("type in properties", _set("properties.type", "annotation"), "must not contain 'type'"),
    ("classification string", _set("properties.classification", "Tumor"), "classification must be"),
    (
        "classification no name",
        _set("properties.classification", {"color": [1, 2, 3]}),
        "classification must be",
    ),
    ("no colour", _set("properties.classification", {"name": "Tumor"}), "color"),
    ("colour out of range", _set("properties.classification.color", [300, 0, 0]), "color"),
    ("colour floats", _set("properties.classification.color", [1.5, 0, 0]), "color"),
    ("colour two values", _set("properties.classification.color", [1, 2]), "color"),
    (
        "measurements list",
        _set("properties.measurements", [{"name": "a", "value": 1}]),
        "measurements must be",
    ),
    ("measurement string", _set("properties.measurements.prob", "high"), "measurement 'prob'"),
    ("measurement nan", _set("properties.measurements.prob", float("inf")), "measurement 'prob'"),
    ("measurement bool", _set("properties.measurements.prob", True), "measurement 'prob'"),
    ("metadata number", _set("properties.metadata.threshold", 0.5), "metadata"),
    ("metadata list", _set("properties.metadata", ["a"]), "metadata"),
    ("name number", _set("properties.name", 3), "name must be a string"),
    ("isLocked string", _set("properties.isLocked", "yes"), "isLocked"),
]


@pytest.mark.parametrize(("mutate", "message"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_validator_rejects_each_rule_naming_the_feature(mutate, message):
    collection = feature_collection([_feature(), _feature(name="second")])
    validate_geojson(collection)  # the baseline is valid
    broken = copy.deepcopy(collection)
    mutate(broken)
    with pytest.raises(GeoJsonError, match="feature 1") as info:
        validate_geojson(broken)
    assert message in str(info.value)
    fid = broken["features"][1].get("id")
    if isinstance(fid, str):
        assert fid in str(info.value)


BOWTIE = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]


@pytest.mark.parametrize(
    ("bad_geometry_at", "bad_props_at", "expected"),
    [(1, 2, "feature 1 .*invalid polygon"), (2, 1, "feature 1 .*objectType"),
     (1, 1, "feature 1 .*invalid polygon")],
    ids=["geometry-first", "properties-first", "same-feature: geometry before properties"],
)  # fmt: skip
def test_validator_names_the_first_offending_feature_in_file_order(
    bad_geometry_at, bad_props_at, expected
):
    collection = feature_collection([_feature() for _ in range(4)])
    collection["features"][bad_geometry_at]["geometry"]["coordinates"] = [BOWTIE]
    collection["features"][bad_props_at]["properties"]["objectType"] = "roi"
    with pytest.raises(GeoJsonError, match=expected):
        validate_geojson(collection)


@pytest.mark.parametrize(
    "container",
    [
        {"type": "Foo"},
        {"type": "FeatureCollection"},
        {"type": "FeatureCollection", "features": {}},
        3,
    ],
)
def test_validator_rejects_bad_containers(container):
    with pytest.raises(GeoJsonError, match="FeatureCollection"):
        validate_geojson(container)


def test_validator_accepts_array_single_feature_and_special_measurements():
    feature = _feature(measurements={"a": "Inf", "b": "-Inf", "c": 1})
    validate_geojson([feature])
    validate_geojson(feature)


def test_what_write_geojson_writes_passes_validation_and_reads_back(tmp_path):
    shape = Polygon(SQUARE, [HOLE])
    two = MultiPolygon([box(0, 0, 1, 1), box(5, 5, 7, 7)])
    features = [
        annotation_feature(
            shape,
            class_name="Tumor",
            name="ROI 1",
            measurements={"area_um2": 96.0, "mean_prob": 0.9},
            metadata={"threshold": 0.5, "frame": "level0"},
        ),
        annotation_feature(two, class_name="Stroma"),
        tile_feature((100, 60), (32, 32), class_name="Tumor", measurements={"prob": 0.8}),
    ]
    path = write_geojson(tmp_path / "rois.geojson", features)
    assert path == tmp_path / "rois.geojson"
    assert [p.name for p in tmp_path.iterdir()] == ["rois.geojson"]  # no temp file left
    validate_geojson(path)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    first, second, tile = data["features"]
    assert first["geometry"]["type"] == "Polygon" and len(first["geometry"]["coordinates"]) == 2
    assert first["properties"]["metadata"] == {"threshold": "0.5", "frame": "level0"}
    assert first["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert second["geometry"]["type"] == "MultiPolygon"
    assert tile["properties"]["objectType"] == "tile"
    assert all(uuid.UUID(f["id"]) for f in data["features"])

    annotations = read_qupath_annotations(path)
    assert [a.class_name for a in annotations] == ["Tumor", "Stroma", "Tumor"]
    assert [a.object_type for a in annotations] == ["annotation", "annotation", "tile"]
    assert annotations[0].geometry.equals(shape)
    assert annotations[1].geometry.area == pytest.approx(5.0)
    assert annotations[2].geometry.bounds == (100, 60, 132, 92)


def test_gzip_output_and_atomicity(tmp_path):
    feature = annotation_feature(box(0, 0, 4, 4), class_name="Tumor")
    path = write_geojson(tmp_path / "rois.geojson", [feature], gzip=True)
    assert path.name == "rois.geojson.gz"
    assert json.loads(gzip.decompress(path.read_bytes()))["features"][0]["id"] == feature["id"]
    validate_geojson_file(path)
    assert read_qupath_annotations(path)[0].geometry.area == 16

    bad = copy.deepcopy(feature)
    bad["properties"]["type"] = "annotation"
    with pytest.raises(GeoJsonError, match="must not contain 'type'"):
        write_geojson(tmp_path / "bad.geojson", [bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rois.geojson.gz"]


def test_annotation_feature_repairs_snaps_and_refuses_what_cannot_be_fixed():
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)])
    feature = annotation_feature(bowtie, class_name="Tumor")
    geom = shapely.geometry.shape(feature["geometry"])
    assert feature["geometry"]["type"] == "MultiPolygon" and geom.is_valid
    assert geom.area == pytest.approx(50)

    offgrid = annotation_feature(box(0.123456, 0, 5.987654, 5), class_name="Tumor")
    assert offgrid["geometry"]["coordinates"][0][0][0] in (0.12, 5.99)
    validate_geojson(offgrid)

    with pytest.raises(GeoJsonError, match="no area"):
        annotation_feature(box(0, 0, 0.001, 0.001), class_name="Tumor")
    with pytest.raises(GeoJsonError, match="finite"):
        annotation_feature(box(0, 0, 1, 1), class_name="Tumor", measurements={"p": float("nan")})
    with pytest.raises(GeoJsonError, match="objectType"):
        annotation_feature(box(0, 0, 1, 1), class_name="Tumor", object_type="cell")


def test_tile_feature_subtracts_the_frame_offset():
    feature = tile_feature(
        (1000, 2000), (512, 512), class_name="Tumor", frame_offset_level0=(100, 50)
    )
    assert shapely.geometry.shape(feature["geometry"]).bounds == (900, 1950, 1412, 2462)


def test_tile_feature_writes_what_the_general_path_would():
    """Tiles skip repair and snapping in shapely; the result must be the same feature."""
    tile = tile_feature((10.004, 20.0), (64.5, 64.5), class_name="Tumor", measurements={"p": 0.5})
    general = annotation_feature(
        box(10.004, 20.0, 74.504, 84.5), class_name="Tumor", measurements={"p": 0.5},
        object_type="tile",
    )  # fmt: skip
    assert json.loads(json.dumps(tile["geometry"])) == json.loads(json.dumps(general["geometry"]))
    assert tile["properties"] == general["properties"]
    validate_geojson(feature_collection([tile]))
    with pytest.raises(GeoJsonError, match="no area"):
        tile_feature((0, 0), (0.001, 5), class_name="Tumor")


def test_class_colours_are_fixed_and_valid():
    assert class_color("Tumor") == (200, 0, 0)
    assert class_color("tumor") == (200, 0, 0)
    colours = {name: class_color(name) for name in ["lymph", "fat", "mucosa", "x" * 40]}
    assert colours == {name: class_color(name) for name in colours}  # deterministic
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours.values())


# --- reading QuPath exports ------------------------------------------------------------------


def _qupath_features() -> list[dict]:
    multi = {
        "type": "MultiPolygon",
        "coordinates": [[SQUARE, HOLE], [[[20, 20], [30, 20], [30, 30], [20, 30], [20, 20]]]],
    }
    return [
        {
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
            },
        },
        {
            "type": "Feature",
            "geometry": multi,
            "properties": {
                "objectType": "annotation",
                "classification": {"names": ["Tumor", "Positive"]},
            },
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
            "properties": {"classification": "Stroma"},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
            "properties": {},
        },
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}},
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
            "properties": {"objectType": "annotation"},
        },
    ]


@pytest.mark.parametrize("form", ["collection", "array", "gzip"])
def test_reader_accepts_every_qupath_form(tmp_path, form, caplog):
    features = _qupath_features()
    if form == "array":
        path = tmp_path / "a.json"
        path.write_text(json.dumps(features))
    else:
        text = json.dumps({"type": "FeatureCollection", "features": features})
        path = tmp_path / ("a.geojson.gz" if form == "gzip" else "a.geojson")
        path.write_bytes(gzip.compress(text.encode()) if form == "gzip" else text.encode())
    with caplog.at_level(logging.INFO, logger="wsi_pixelcam.geo.geojson"):
        annotations = read_qupath_annotations(path)
    assert [a.class_name for a in annotations] == ["Tumor", "Tumor: Positive", "Stroma", None]
    assert all(a.object_type == "annotation" for a in annotations)
    assert annotations[1].geometry.area == pytest.approx(100 - 4 + 100)
    assert isinstance(annotations[1].geometry, MultiPolygon)
    assert "2 features without area skipped" in caplog.text


def test_reader_accepts_a_single_feature_repairs_it_and_shifts_frames(tmp_path):
    bowtie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": bowtie},
        "properties": {"objectType": "detection"},
    }
    path = tmp_path / "one.geojson"
    path.write_text(json.dumps(feature))
    (annotation,) = read_qupath_annotations(path, frame_offset_level0=(1000, 500))
    assert annotation == Annotation(None, annotation.geometry, "detection")
    assert annotation.geometry.is_valid and annotation.geometry.area == pytest.approx(50)
    assert annotation.geometry.bounds == (1000, 500, 1010, 510)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"type": "Foo"}), "FeatureCollection"),
        (
            json.dumps([{"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}}]),
            "no polygon",
        ),
        (json.dumps([]), "no polygon"),
        (
            json.dumps(
                [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
                        "properties": {"classification": 5},
                    }
                ]
            ),
            "classification",
        ),
        (
            json.dumps(
                [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1, 2]]}}]
            ),
            "unreadable geometry",
        ),
    ],
)
def test_reader_errors_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=message) as info:
        read_qupath_annotations(path)
    assert str(path) in str(info.value)


def test_reader_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="cannot read"):
        read_qupath_annotations(tmp_path / "missing.geojson")
