import numpy as np
import pytest

from wsi_pixelcam.geometry import box_sum, choose_level, grid_starts, summed_area_table


def test_choose_level_reads_matching_level_without_resize():
    choice = choose_level((1.0, 4.0, 16.0), mpp_level0=0.25, target_mpp=1.0, tolerance=0.02)
    assert (choice.level, choice.needs_resize, choice.scale_level0) == (1, False, 4.0)


def test_choose_level_resamples_from_finer_level():
    choice = choose_level((1.0, 4.0, 16.0), mpp_level0=0.25, target_mpp=0.5, tolerance=0.02)
    assert choice.level == 0 and choice.resize_factor == pytest.approx(2.0)


def test_choose_level_snaps_within_tolerance():
    # 0.499 um/px slide at 0.5 target: read level 0 as is, effective scale exactly 1
    choice = choose_level((1.0,), mpp_level0=0.499, target_mpp=0.5, tolerance=0.02)
    assert not choice.needs_resize and choice.scale_level0 == 1.0


def test_grid_starts_only_whole_patches():
    assert grid_starts(1000, 256, 256).tolist() == [0, 256, 512]
    assert grid_starts(100, 256, 256).size == 0
    assert grid_starts(512, 256, 128).tolist() == [0, 128, 256]


def test_box_sum_matches_brute_force_on_fractional_boxes():
    rng = np.random.default_rng(0)
    image = rng.random((7, 9))
    table = summed_area_table(image)
    # brute force by supersampling each pixel 100 x 100
    fine = image.repeat(100, 0).repeat(100, 1)
    for x0, y0, x1, y1 in [(0.5, 0.25, 3.75, 2.5), (1.0, 1.0, 9.0, 7.0), (2.33, 4.1, 2.9, 6.66)]:
        exact = box_sum(table, np.array([x0]), np.array([y0]), np.array([x1]), np.array([y1]))[0]
        brute = (
            fine[round(y0 * 100) : round(y1 * 100), round(x0 * 100) : round(x1 * 100)].sum() / 1e4
        )
        assert exact == pytest.approx(brute, rel=1e-2)
