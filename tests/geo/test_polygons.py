"""Masks and maps to polygons: exact areas, holes, seams, validity, physical-unit filters."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import zarr
from shapely.geometry import Polygon

from wsi_pixelcam.geo.polygons import polygons_from_chunked_map, polygons_from_mask
from wsi_pixelcam.store.heatmap_store import Block, HeatmapStore, open_heatmap

S = 2.5  # level-0 px per mask px: non-trivial but exact on QuPath's 0.01 px grid
MPP0 = 0.25
OFFSET = (100.0, 40.0)


def _polys(mask: np.ndarray, **kw) -> list[Polygon]:
    return polygons_from_mask(
        mask, level0_per_px=S, mpp_level0=MPP0, frame_offset_level0=OFFSET, **kw
    )


def _covers_pixel_centres(polys: list[Polygon], mask: np.ndarray) -> np.ndarray:
    """Which mask pixel centres (mapped like the polygons) fall inside the union."""
    rows, cols = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    x = (cols + 0.5) * S - OFFSET[0]
    y = (rows + 0.5) * S - OFFSET[1]
    union = shapely.unary_union(polys) if polys else Polygon()
    return shapely.contains_xy(union, x, y)


def test_box_has_exactly_the_box_area_and_bounds():
    mask = np.zeros((30, 40), bool)
    mask[3:9, 5:17] = True
    (poly,) = _polys(mask)
    assert poly.area == 6 * 12 * S * S
    assert poly.bounds == (5 * S - 100, 3 * S - 40, 17 * S - 100, 9 * S - 40)
    assert len(poly.exterior.coords) == 5  # collinear pixel-edge vertices are dropped


def test_ring_gives_one_polygon_with_one_hole_of_the_right_areas():
    yy, xx = np.mgrid[0:160, 0:160]
    r = np.hypot(yy - 80, xx - 80)
    mask = (r < 60.5) & (r >= 25.5)  # radii off the lattice: no boundary ties
    (poly,) = _polys(mask)
    assert poly.is_valid and len(poly.interiors) == 1
    assert poly.area == mask.sum() * S * S  # exact against the pixel count
    outer = Polygon(poly.exterior).area
    hole = Polygon(poly.interiors[0]).area
    assert outer == pytest.approx(np.pi * 60.5**2 * S * S, rel=0.01)
    assert hole == pytest.approx(np.pi * 25.5**2 * S * S, rel=0.01)
    cx, cy = poly.centroid.coords[0]
    centre = 80.5 * S  # pixel 80 spans [80, 81) mask px
    assert (cx, cy) == pytest.approx((centre - OFFSET[0], centre - OFFSET[1]), abs=0.01)


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_are_reproduced_exactly_and_valid(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((40, 50)) < (0.3 + 0.1 * seed)
    polys = _polys(mask)
    assert all(p.is_valid and isinstance(p, Polygon) for p in polys)
    assert sum(p.area for p in polys) == pytest.approx(mask.sum() * S * S)
    assert (_covers_pixel_centres(polys, mask) == mask).all()


def test_corner_touching_pixels_are_valid_separate_polygons():
    bowtie = np.zeros((5, 5), bool)
    bowtie[1, 1] = bowtie[2, 2] = True
    polys = _polys(bowtie)
    assert len(polys) == 2 and all(p.is_valid and p.area == S * S for p in polys)

    # a ring whose gap is closed only at a corner: the hole touches the shell at one point
    ring = np.zeros((8, 8), bool)
    ring[1, 1:6] = ring[1:6, 1] = ring[5, 1:5] = ring[1:5, 5] = True
    polys = _polys(ring)
    assert all(p.is_valid for p in polys)
    assert sum(p.area for p in polys) == ring.sum() * S * S
    assert (_covers_pixel_centres(polys, ring) == ring).all()


def test_empty_mask_gives_no_polygons():
    assert _polys(np.zeros((10, 10), bool)) == []


def test_min_area_and_min_hole_are_in_square_microns():
    mask = np.zeros((60, 60), bool)
    mask[5:45, 5:45] = True
    mask[10:12, 10:12] = False  # 4 px hole
    mask[20:30, 20:30] = False  # 100 px hole
    mask[50:52, 50:52] = True  # 4 px speck
    um2_per_px = (S * MPP0) ** 2
    polys = _polys(mask, min_area_um2=10 * um2_per_px, min_hole_um2=10 * um2_per_px)
    assert len(polys) == 1 and len(polys[0].interiors) == 1
    assert polys[0].area == (40 * 40 - 100) * S * S


def test_simplification_keeps_validity_and_area_close():
    yy, xx = np.mgrid[0:200, 0:200]
    mask = np.hypot(yy - 100, xx - 100) < 80
    exact = _polys(mask)[0]
    simple = _polys(mask, simplify_um=0.5)[0]
    assert simple.is_valid
    assert len(simple.exterior.coords) < len(exact.exterior.coords) / 2
    assert simple.area == pytest.approx(exact.area, rel=0.005)
    tolerance_level0 = 0.5 / MPP0
    assert shapely.hausdorff_distance(exact, simple) <= tolerance_level0 + 0.01


def test_output_is_on_qupaths_grid():
    mask = np.zeros((20, 20), bool)
    mask[2:7, 3:11] = True
    (poly,) = polygons_from_mask(mask, level0_per_px=3.333333, mpp_level0=0.3)
    coords = np.asarray(poly.exterior.coords)
    assert np.allclose(coords * 100, np.round(coords * 100), atol=1e-6)


def _smooth_map(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / 9.0
    field = np.zeros(shape)
    for _ in range(6):
        fy, fx, py, px = rng.uniform(0.2, 1.0, 2).tolist() + rng.uniform(0, 6, 2).tolist()
        field += np.sin(fy * yy + py) * np.cos(fx * xx + px)
    return (field - field.min()) / (field.max() - field.min())


@pytest.mark.parametrize("chunk_px", [16, 23, 64])
def test_chunked_equals_whole_on_a_zarr_map_with_nan(tmp_path, chunk_px):
    prob = _smooth_map((90, 110), seed=3).astype(np.float32)
    prob[:, 70:75] = np.nan  # a strip without tissue splits regions
    arr = zarr.create_array(tmp_path / "m.zarr", shape=prob.shape, chunks=(32, 32), dtype="f4")
    arr[...] = prob
    whole = _polys(prob >= 0.55)
    chunked = polygons_from_chunked_map(
        arr, 0.55, chunk_px=chunk_px, level0_per_px=S, mpp_level0=MPP0, frame_offset_level0=OFFSET
    )
    assert len(chunked) == len(whole) > 1
    assert all(p.is_valid for p in chunked)
    assert shapely.unary_union(whole).symmetric_difference(shapely.unary_union(chunked)).area == 0
    assert sum(p.area for p in chunked) == np.sum(prob >= 0.55) * S * S


def test_region_crossing_chunk_seams_is_one_polygon_with_its_hole():
    yy, xx = np.mgrid[0:100, 0:100]
    r = np.hypot(yy - 50, xx - 50)
    prob = np.where((r < 40) & (r >= 12), 0.9, 0.1)
    (whole,) = _polys(prob >= 0.5)
    chunked = polygons_from_chunked_map(
        prob, 0.5, chunk_px=32, level0_per_px=S, mpp_level0=MPP0, frame_offset_level0=OFFSET
    )
    assert len(chunked) == 1
    assert len(chunked[0].interiors) == 1
    assert chunked[0].area == whole.area
    assert chunked[0].symmetric_difference(whole).area == 0


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="2-D"):
        polygons_from_mask(np.zeros((2, 2, 2), bool), level0_per_px=1, mpp_level0=1)
    with pytest.raises(ValueError, match="positive"):
        polygons_from_mask(np.ones((2, 2), bool), level0_per_px=0, mpp_level0=1)
    with pytest.raises(ValueError, match="chunk_px"):
        polygons_from_chunked_map(np.ones((2, 2)), 0.5, chunk_px=0, level0_per_px=1, mpp_level0=1)


def test_polygons_from_a_finished_heatmap_store(tmp_path):
    store = HeatmapStore.create(tmp_path / "h.zarr", (50, 70), 2.0, level0_per_px=8.0, chunk_px=16)
    weight = np.ones((20, 30), np.float32)
    store.add([Block(10, 25, 0.9 * weight[None], weight)])  # crosses chunk seams both ways
    heatmap = open_heatmap(store.finalize())
    (poly,) = polygons_from_chunked_map(
        heatmap.plane(0), 0.5, chunk_px=16, level0_per_px=heatmap.level0_per_px, mpp_level0=0.25
    )
    assert poly.bounds == (25 * 8, 10 * 8, 55 * 8, 30 * 8)
    assert poly.area == 20 * 30 * 64
