"""``wsi-pixelcam validate-geojson`` in-process: QuPath's rules, one line per bad file."""

import json
import uuid

import pytest

from wsi_pixelcam.cli import main

SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]


def _feature(**changes):
    feature = {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": "Tumor", "color": [200, 0, 0]},
        },
    }
    feature.update(changes)
    return {k: v for k, v in feature.items() if v is not None}


def _write(path, *features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": list(features)}))
    return path


def test_features_without_id_are_valid(tmp_path, capsys):
    # QuPath gives an object without an id one of its own, so nothing is lost
    path = _write(tmp_path / "drawn.geojson", _feature(id=None), _feature())
    assert main(["validate-geojson", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: valid for QuPath"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("bad_id.geojson", None, "feature 1 (id 'roi-1'): id must be a UUID string"),
        ("broken.geojson", "{not json", "not valid JSON"),
        ("missing.geojson", "", "cannot read GeoJSON"),
    ],
)
def test_bad_file_is_one_line_naming_it(tmp_path, capsys, name, content, problem):
    path = tmp_path / name
    if content is None:
        _write(path, _feature(), _feature(id="roi-1"))
    elif content:
        path.write_text(content)
    assert main(["validate-geojson", str(path)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wsi-pixelcam: error: {path}: ")
    assert problem in err[0] and "Traceback" not in captured.err
