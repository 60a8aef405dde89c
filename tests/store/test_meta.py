"""``PatchStoreMeta``: every store is described, validated on open, migrated or refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zarr
from storegen import make_store

from wsi_pixelcam.errors import StoreError, TilingMismatchError
from wsi_pixelcam.store import PatchStoreMeta, open_patch_store
from wsi_pixelcam.store.meta import SCHEMA_VERSION


def _attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def _set_attrs(path: Path, attrs: dict) -> None:
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"] = attrs
    (path / "zarr.json").write_text(json.dumps(doc))


def test_image_store_describes_a_virtual_slide_and_round_trips(tmp_path: Path) -> None:
    store = open_patch_store(make_store(tmp_path / "s.zarr", n=5, patch_px=32, mpp=0.5))
    meta = store.meta
    assert meta.from_images and meta.n_patches == 5 and meta.slide.dimensions_level0 == (160, 32)
    assert meta.mpp is not None and meta.mpp_level0 == meta.patch_mpp == 0.5
    assert meta.tiling.patch_level0 == meta.tiling.stride_level0 == 32
    assert PatchStoreMeta.from_attrs(meta.to_attrs(), "x") == meta
    assert _attrs(store.path)["schema_version"] == SCHEMA_VERSION


def test_unknown_mpp_is_none_not_a_crash(tmp_path: Path) -> None:
    meta = open_patch_store(make_store(tmp_path / "s.zarr", n=2, mpp=None)).meta
    assert meta.mpp is None and meta.patch_mpp is None and meta.mpp_level0 is None


def test_schema_1_image_store_is_migrated_on_read(tmp_path: Path) -> None:
    path = make_store(tmp_path / "old.zarr", n=3, patch_px=32, mpp=0.5)
    v1 = {
        "slide_id": "old",
        "tiling": {"effective_mpp": 0.5, "target_mpp": 0.5, "patch_px": 32},
        "labels": {"classes": ["background", "tumour"], "source": {"kind": "dataset"}},
        "schema": "wsi-pixelcam.patch-store",
        "schema_version": 1,
        "n_patches": 3,
        "complete": True,
    }
    _set_attrs(path, v1)
    meta = open_patch_store(path).meta
    assert meta.from_images and meta.slide.dimensions_level0 == (96, 32)
    assert meta.patch_mpp == 0.5 and meta.labels.classes == ("background", "tumour")


def test_future_schema_is_refused_saying_upgrade(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.zarr", n=2)
    _set_attrs(path, {**_attrs(path), "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(StoreError, match=r"s.zarr: patch store schema 3 .* newer .* upgrade"):
        open_patch_store(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a["tiling"].update(patch_px="big"), r"field 'tiling.patch_px' is invalid"),
        (lambda a: a["tiling"].pop("patch_level0"), r"field 'tiling.patch_level0' is missing"),
        (lambda a: a["mpp"].update(value=-1), r"field 'mpp.value' is invalid"),
        (lambda a: a.pop("slide"), r"field 'slide' is missing"),
        (lambda a: a.update(schema_version="two"), r"schema_version 'two' is not one"),
    ],
)
def test_hand_edited_attrs_name_the_store_and_the_field(tmp_path: Path, edit, message) -> None:
    path = make_store(tmp_path / "s.zarr", n=2, mpp=0.5)
    attrs = _attrs(path)
    edit(attrs)
    _set_attrs(path, attrs)
    with pytest.raises(StoreError, match=message) as caught:
        open_patch_store(path)
    text = str(caught.value)
    assert text.startswith(str(path)) and "re-tile" in text and "\n" not in text


def test_one_fit_check_for_size_and_resolution(tmp_path: Path) -> None:
    meta = open_patch_store(make_store(tmp_path / "s.zarr", n=2, patch_px=32, mpp=0.5)).meta
    meta.check_fits(patch_px=32, mpp=0.51, tolerance=0.05, reference="the model", where="s")
    with pytest.raises(TilingMismatchError, match=r"s: patches are 32 px but the model expects 64"):
        meta.check_fits(patch_px=64, mpp=0.5, tolerance=0.05, reference="the model", where="s")
    with pytest.raises(TilingMismatchError, match=r"0.5 um/px but the model expects 1 um/px"):
        meta.check_fits(patch_px=32, mpp=1.0, tolerance=0.05, reference="the model", where="s")
    with pytest.raises(TilingMismatchError, match=r"expects unknown um/px"):
        meta.check_fits(patch_px=32, mpp=None, tolerance=0.05, reference="the model", where="s")
    unknown = open_patch_store(make_store(tmp_path / "u.zarr", n=2, mpp=None)).meta
    unknown.check_fits(patch_px=32, mpp=None, tolerance=0.05, reference="the model", where="u")
    with pytest.raises(TilingMismatchError, match=r"patches are at unknown um/px"):
        unknown.check_fits(patch_px=32, mpp=0.5, tolerance=0.05, reference="the model", where="u")


def test_store_under_construction_says_incomplete(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.zarr", n=2)
    group = zarr.open_group(path, mode="r+")
    group.attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete"):
        open_patch_store(path)
