"""ROI masks kept in the store at tile time: exact pixels, size rule, agreement, old stores."""

import json
import shutil

import numpy as np
import pytest

from wsi_pixelcam.config import TileConfig
from wsi_pixelcam.data.masks import add_masks_from_annotations
from wsi_pixelcam.data.patch_dataset import read_store_info
from wsi_pixelcam.labels import LabelSource
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.tiling import tile_slide

ROI = (1104, 600, 1704, 1000)  # level-0 x0, y0, x1, y1; no mask pixel centre on an edge


def _geojson(path, boxes):
    """A QuPath GeoJSON of (class name, level-0 box) rectangles."""
    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
            },
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }
        for name, (x0, y0, x1, y1) in boxes
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _expected(corner, patch_level0, mask_px):
    """The ROI's mask over one patch, from pixel centres (independent of the rasteriser)."""
    centres = (np.arange(mask_px) + 0.5) * patch_level0 / mask_px
    xs, ys = corner[0] + centres, corner[1] + centres
    inside_x = (xs > ROI[0]) & (xs < ROI[2])
    inside_y = (ys > ROI[1]) & (ys < ROI[3])
    return (inside_y[:, None] & inside_x[None, :]).astype(np.uint8)


@pytest.mark.parametrize(("patch_px", "mask_px"), [(64, 64), (256, 128)])
def test_masks_match_the_annotated_rectangle(tmp_path, slides, layout, patch_px, mask_px):
    # 0.25 um/px slide tiled at 0.5 um/px: a patch spans 2 * patch_px level-0 px
    geojson = _geojson(tmp_path / "a.geojson", [("Tumor", ROI), ("background", (0, 0, 4096, 3072))])
    cfg = TileConfig(target_mpp=0.5, patch_px=patch_px)
    result = tile_slide(slides["svs"], cfg, tmp_path, labels=LabelSource(annotations=geojson))
    store = open_patch_store(result.store_path)
    masks = store.group["masks"][...]
    assert masks.shape == (len(store), mask_px, mask_px) and masks.dtype == np.uint8
    record = store.derived_record("masks")
    assert record == {
        "source": "annotations", "path": str(geojson), "mask_px": mask_px, "complete": True
    }  # fmt: skip
    patch_level0 = 2 * patch_px
    for corner, mask in zip(store.coords, masks, strict=True):
        np.testing.assert_array_equal(mask, _expected(corner, patch_level0, mask_px))
    # level-0 area of the ROI inside tissue, counted in mask pixels
    level0_per_px = patch_level0 / mask_px
    assert masks.sum() == (600 * 400) / level0_per_px**2
    assert read_store_info(result.store_path).mask_px == mask_px


def test_annotations_added_later_give_the_same_masks(tmp_path, slides):
    geojson = _geojson(
        tmp_path / "a.geojson", [("Tumor", ROI), ("Stroma", (2500, 2000, 2900, 2300))]
    )
    cfg = TileConfig(target_mpp=0.5, patch_px=128)
    result = tile_slide(slides["svs"], cfg, tmp_path, labels=LabelSource(annotations=geojson))
    at_tile_time = open_patch_store(result.store_path).group["masks"][...]
    assert at_tile_time.any()
    add_masks_from_annotations(result.store_path, geojson)
    later = open_patch_store(result.store_path)
    np.testing.assert_array_equal(later.group["masks"][...], at_tile_time)
    assert later.derived_record("masks")["mask_px"] == 128


def test_background_only_annotations_tile_with_empty_masks(tmp_path, slides):
    geojson = _geojson(tmp_path / "a.geojson", [("background", (0, 0, 4096, 3072))])
    cfg = TileConfig(target_mpp=0.5, patch_px=128)
    result = tile_slide(slides["svs"], cfg, tmp_path, labels=LabelSource(annotations=geojson))
    store = open_patch_store(result.store_path)
    assert result.status == "ok" and store.classes == ["background"]
    assert store.group["masks"].shape == (64, 128, 128) and not store.group["masks"][...].any()


def test_other_label_sources_store_no_masks(tmp_path, slides):
    cfg = TileConfig(target_mpp=0.5, patch_px=128)
    result = tile_slide(slides["svs"], cfg, tmp_path, labels=LabelSource(slide_label="tumor"))
    store = open_patch_store(result.store_path)
    assert not store.has("masks") and store.derived_record("masks") is None


def test_store_tiled_before_masks_were_kept_is_reused(tmp_path, slides):
    geojson = _geojson(tmp_path / "a.geojson", [("Tumor", ROI)])
    cfg = TileConfig(target_mpp=0.5, patch_px=128)
    labels = LabelSource(annotations=geojson)
    path = tile_slide(slides["svs"], cfg, tmp_path, labels=labels).store_path
    with_masks = tile_slide(slides["svs"], cfg, tmp_path, labels=labels)
    assert with_masks.message == "complete store with the same parameters"
    # what a store of an earlier version looks like: the same attrs, no masks
    shutil.rmtree(f"{path}/masks")
    meta = json.loads(open(f"{path}/zarr.json").read())
    del meta["attributes"]["masks"]
    open(f"{path}/zarr.json", "w").write(json.dumps(meta))
    again = tile_slide(slides["svs"], cfg, tmp_path, labels=labels)
    assert again.status == "skipped" and "eval --annotations adds them" in again.message
    assert not read_store_info(path).has_masks
