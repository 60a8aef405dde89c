"""Patch ROI masks: pixel centres inside the geometry, holes kept, blocks in patch order."""

from __future__ import annotations

import numpy as np
import shapely

from wsi_pixelcam.geo.raster import patch_masks, rasterise


def test_rasterise_counts_pixel_centres_and_respects_holes() -> None:
    ring = shapely.box(0, 0, 8, 8).difference(shapely.box(2, 2, 6, 6))
    mask = rasterise(ring, (0.0, 0.0), (8, 8))
    assert mask.sum() == 64 - 16 and not mask[2:6, 2:6].any()
    half = rasterise(shapely.box(0, 0, 4, 8), (0.0, 0.0), (16, 16), scale=2.0)
    assert half[:, :8].all() and not half[:, 8:].any()


def test_centres_on_an_edge_belong_to_one_side_only() -> None:
    """Boxes from x 0.5 to 2.5 and 2.5 to 4.5 share the centres' column x = 2.5: the right one
    takes it (half-open), so shared edges never count a pixel twice or not at all."""
    left = rasterise(shapely.box(0.5, 0.5, 2.5, 3.5), (0.0, 0.0), (4, 5))
    right = rasterise(shapely.box(2.5, 0.5, 4.5, 3.5), (0.0, 0.0), (4, 5))
    assert not (left & right).any() and (left | right)[:3, :4].all()
    assert left[0].tolist() == [True, True, False, False, False]
    assert left[:, 0].tolist() == [True, True, True, False]  # top edge in, bottom edge out


def test_a_window_off_the_origin_and_a_triangle() -> None:
    triangle = shapely.Polygon([(10, 10), (18, 10), (10, 18)])
    mask = rasterise(triangle, (10.0, 10.0), (8, 8))
    centres = np.mgrid[0:8, 0:8] + 0.5  # (row, col) centres relative to the window
    expected = centres[0] + centres[1] < 8  # below the hypotenuse x + y = 8
    np.testing.assert_array_equal(mask, expected)


def test_patch_masks_come_in_blocks_in_patch_order() -> None:
    # 10-unit patches drawn at 4 px (2.5 units per pixel); the ROI is x 5..25, y 0..5
    roi = shapely.box(5, 0, 25, 5)
    corners = np.array([[0, 0], [10, 0], [20, 0], [30, 0], [0, 10]], np.float64)
    blocks = list(patch_masks(roi, corners, 10.0, 4, block_rows=2))
    assert [start for start, _ in blocks] == [0, 2, 4]
    assert [rows.shape for _, rows in blocks] == [(2, 4, 4), (2, 4, 4), (1, 4, 4)]
    masks = np.concatenate([rows for _, rows in blocks])
    # pixel centres at 1.25, 3.75, 6.25, 8.75 from each corner; rows 0-1 have y < 5
    expected = np.zeros((5, 4, 4), np.uint8)
    expected[0, :2, 2:] = 1  # x 6.25, 8.75
    expected[1, :2, :] = 1  # x 11.25 .. 18.75
    expected[2, :2, :2] = 1  # x 21.25, 23.75
    np.testing.assert_array_equal(masks, expected)
