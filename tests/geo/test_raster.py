"""Patch ROI masks: pixel centres inside the geometry, holes kept, blocks in patch order."""

from __future__ import annotations

import numpy as np
import shapely

from wsi_pixelcam.geo.raster import patch_masks, rasterise


def test_rasterise_counts_pixel_centres_and_respects_holes() -> None:
    ring = shapely.box(0, 0, 8, 8).difference(shapely.box(2, 2, 6, 6))
    mask = rasterise(ring, (0.0, 0.0), 8.0, 8)
    assert mask.sum() == 64 - 16 and not mask[2:6, 2:6].any()
    half = rasterise(shapely.box(0, 0, 4, 8), (0.0, 0.0), 8.0, 16)  # 2 output px per unit
    assert half[:, :8].all() and not half[:, 8:].any()


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
