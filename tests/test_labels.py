import json
import uuid

import numpy as np
import pytest

from wsi_pixelcam.config import LabelConfig
from wsi_pixelcam.errors import AnnotationError
from wsi_pixelcam.labels import (
    labels_from_annotations,
    labels_from_points,
    read_label_csv,
    spellings,
)


def _polygon_feature(coords, classification):
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": coords},
        "properties": {"objectType": "annotation", "classification": classification},
    }


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


XY = np.array([[0, 0], [100, 0], [200, 0], [0, 100]], dtype=np.int64)  # 100 px patches


def test_annotation_labels_by_covered_area(tmp_path):
    # tumor covers patch 0 fully and patch 1 at 30 %; stroma covers patch 2 at 60 %
    path = tmp_path / "a.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    _polygon_feature(
                        [_square(0, 0, 130, 100)], {"name": "Tumor", "color": [200, 0, 0]}
                    ),
                    _polygon_feature([_square(240, 0, 300, 100)], "Stroma"),
                ],
            }
        )
    )
    out = labels_from_annotations(path, XY, 100.0, (1000, 1000), (0, 0), LabelConfig())
    assert out.classes == ["background", "Stroma", "Tumor"]
    assert out.labels.tolist() == [2, 0, 1, 0]
    assert out.roi_coverage == pytest.approx([1.0, 0.3, 0.6, 0.0])


def test_hole_is_not_covered(tmp_path):
    path = tmp_path / "a.geojson"
    outer, hole = _square(0, 0, 300, 300), _square(110, 10, 190, 90)[::-1]
    path.write_text(json.dumps([_polygon_feature([outer, hole], "Tumor")]))  # bare array form
    out = labels_from_annotations(path, XY, 100.0, (1000, 1000), (0, 0), LabelConfig())
    assert out.labels.tolist() == [1, 0, 1, 1]
    assert out.roi_coverage[1] == pytest.approx(0.36)


def test_bounds_offset_frame(tmp_path):
    # QuPath's frame starts at the bounds offset: an ROI at (0,0) there is level-0 (500, 500)
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps([_polygon_feature([_square(0, 0, 100, 100)], "Tumor")]))
    xy = np.array([[500, 500], [0, 0]], dtype=np.int64)
    out = labels_from_annotations(path, xy, 100.0, (2000, 2000), (500, 500), LabelConfig())
    assert out.labels.tolist() == [1, 0]


def test_annotations_of_another_slide_are_rejected(tmp_path):
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps([_polygon_feature([_square(5000, 5000, 6000, 6000)], "Tumor")]))
    with pytest.raises(AnnotationError, match="no annotation overlaps the slide"):
        labels_from_annotations(path, XY, 100.0, (1000, 1000), (0, 0), LabelConfig())


def test_malformed_geojson(tmp_path):
    path = tmp_path / "a.geojson"
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match=r"a\.geojson"):
        labels_from_annotations(path, XY, 100.0, (1000, 1000), (0, 0), LabelConfig())


def test_points_label_the_patch_that_contains_them():
    out = labels_from_points(
        [(150, 50, "Tumor"), (5, 150, "Normal"), (9999, 9999, "Tumor")],
        XY,
        100.0,
        LabelConfig(background_class=None),
        "labels.csv",
    )
    assert out.classes == ["Normal", "Tumor"]
    assert out.labels.tolist() == [-1, 1, -1, 0]


def test_label_csv_needs_columns(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("slide,x,label\na,1,T\n")
    with pytest.raises(AnnotationError, match="lacks columns \\['y'\\]"):
        read_label_csv(path)


def test_class_names_differing_only_in_case_are_one_class(tmp_path, caplog):
    # "Tumor" covers patch 0, "tumor" patch 1: one class, spelled as labels.classes lists it
    path = tmp_path / "a.geojson"
    features = [
        _polygon_feature([_square(0, 0, 100, 100)], "Tumor"),
        _polygon_feature([_square(100, 0, 200, 100)], "tumor"),
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = labels_from_annotations(path, XY, 100.0, (1000, 1000), (0, 0), LabelConfig())
    assert out.classes == ["background", "Tumor"] and out.labels.tolist() == [1, 1, 0, 0]
    assert "['Tumor', 'tumor'] differ only in case" in caplog.text
    assert caplog.text.count("differ only in case") == 1
    cfg = LabelConfig(classes=["background", "TUMOR"])
    out = labels_from_annotations(path, XY, 100.0, (1000, 1000), (0, 0), cfg)
    assert out.classes == ["background", "TUMOR"] and out.labels.tolist() == [1, 1, 0, 0]
    points = labels_from_points([(10, 10, "tumor")], XY, 100.0, cfg, "p.csv")
    assert points.labels.tolist() == [1, -1, -1, -1]


def test_spellings_prefer_the_configured_one():
    assert spellings(["tumor", "Tumor", "normal"], ["TUMOR"]) == {
        "tumor": "TUMOR", "Tumor": "TUMOR", "normal": "normal",
    }  # fmt: skip
    assert spellings(["tumor", "Tumor"]) == {"tumor": "Tumor", "Tumor": "Tumor"}  # sorted first
