"""Seeds drawn from CAMs with a known layout: where they may fall and how many there are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsi_pixelcam.errors import ConfigError
from wsi_pixelcam.model.seeds import (
    IGNORE_INDEX,
    GeometricAug,
    SeedConfig,
    augment_pair,
    draw_seeds,
    otsu_region,
    random_geometric_aug,
)


def _square_cam(size: int, y0: int, y1: int, x0: int, x1: int, seed: int = 0) -> torch.Tensor:
    """Low noisy background (< 0.1) with a bright block (> 0.9): Otsu splits them exactly."""
    rng = np.random.default_rng(seed)
    cam = rng.uniform(0.0, 0.1, (size, size))
    cam[y0:y1, x0:x1] = rng.uniform(0.9, 1.0, (y1 - y0, x1 - x0))
    return torch.from_numpy(cam).float()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_threshold_seeds_fall_in_eroded_region_and_background_pool() -> None:
    cam = _square_cam(16, 4, 12, 3, 11)
    eroded = torch.zeros(16, 16, dtype=torch.bool)
    eroded[5:11, 4:10] = True  # the block shrunk by one cell: a 3x3 erosion
    bg_pool = cam <= torch.quantile(cam.flatten(), 0.4 - 1e-6, interpolation="lower")
    for seed in range(20):
        seeds = draw_seeds(cam[None], config=SeedConfig(erode_k=3), generator=_gen(seed))[0]
        assert seeds.dtype == torch.long
        assert (seeds == 1).sum() == 5 and (seeds == 0).sum() == 5
        assert eroded[seeds == 1].all()
        assert bg_pool[seeds == 0].all()
        assert set(seeds.unique().tolist()) <= {IGNORE_INDEX, 0, 1}


def test_background_pool_is_lowest_fraction() -> None:
    cam = torch.arange(100.0).view(10, 10) / 99
    cfg = SeedConfig(n_fg=0, n_bg=100, min_p=0.4)
    seeds = draw_seeds(cam[None], config=cfg, generator=_gen())[0]
    assert torch.equal((seeds == 0).flatten(), torch.arange(100) < 40)


def test_counts_shrink_to_small_pools() -> None:
    cam = _square_cam(12, 2, 5, 2, 5)  # a 3x3 block: 9 fg candidates without erosion
    seeds = draw_seeds(cam[None], config=SeedConfig(n_fg=20, n_bg=3, erode_k=1), generator=_gen())
    assert (seeds == 1).sum() == 9 and (seeds == 0).sum() == 3


def test_paper_erosion_wipes_out_narrow_regions() -> None:
    cam = _square_cam(28, 10, 18, 10, 18)  # 8 cells wide
    assert otsu_region(cam.numpy(), erode_k=3).sum() == 36
    assert otsu_region(cam.numpy(), erode_k=11).sum() == 0
    seeds = draw_seeds(cam[None], config=SeedConfig(erode_k=11), generator=_gen())
    assert (seeds == 1).sum() == 0 and (seeds == 0).sum() == 5


def test_erosion_treats_outside_as_foreground() -> None:
    cam = np.zeros((6, 6))
    cam[:, :4] = 1.0  # touches the left, top and bottom borders
    region = otsu_region(cam, erode_k=3)
    expected = np.zeros((6, 6), dtype=bool)
    expected[:, :3] = True  # only the edge facing the background recedes
    assert np.array_equal(region, expected)


def test_otsu_threshold_is_clamped_to_1() -> None:
    cam = np.zeros((8, 8))
    cam[:, 4:] = 1.5 / 255  # quantises to 1: Otsu falls below 1, the clamp keeps it at 1
    assert otsu_region(cam, erode_k=1).sum() == 0


def test_overlapping_seeds_become_ignore() -> None:
    cam = torch.zeros(10, 10)
    cam[:, 3:] = 1.0  # 70% bright, so the lowest 40% includes 10 bright cells
    cam += torch.linspace(0, 0.003, 100).view(10, 10)  # distinct values, same quantum
    cfg = SeedConfig(n_fg=100, n_bg=100, erode_k=1)
    seeds = draw_seeds(cam[None], config=cfg, generator=_gen())[0]
    bright = cam >= 1.0
    low = torch.zeros(100, dtype=torch.bool)
    low[torch.argsort(cam.flatten(), stable=True)[:40]] = True
    low = low.view(10, 10)
    assert torch.equal(seeds == IGNORE_INDEX, (bright & low) | (~bright & ~low))
    assert torch.equal(seeds == 1, bright & ~low)


def test_negative_patches_get_background_only_anywhere() -> None:
    cam = _square_cam(16, 0, 16, 0, 12)  # bright almost everywhere
    positive = _square_cam(16, 4, 12, 4, 12)
    negative = torch.tensor([True, False])
    seen = torch.zeros(16, 16, dtype=torch.bool)
    for seed in range(30):
        seeds = draw_seeds(torch.stack([cam, positive]), negative, generator=_gen(seed))
        assert (seeds[0] == 1).sum() == 0 and (seeds[0] == 0).sum() == 5
        assert (seeds[1] == 1).sum() == 5
        seen |= seeds[0] == 0
    assert seen[:, :12].any()  # not confined to the low-CAM strip
    constant = draw_seeds(torch.ones(1, 8, 8), torch.tensor([True]), generator=_gen())
    assert (constant == 0).sum() == 5


def test_constant_cam_gives_no_seeds() -> None:
    for value in (0.0, 0.5, 1.0):
        for method in ("threshold", "probability"):
            cfg = SeedConfig(method=method)  # type: ignore[arg-type]
            seeds = draw_seeds(torch.full((2, 6, 6), value), config=cfg, generator=_gen())
            assert (seeds == IGNORE_INDEX).all()


def test_draws_are_reproducible_with_a_generator() -> None:
    cam = _square_cam(16, 2, 14, 2, 14)[None]
    first = draw_seeds(cam, generator=_gen(7))
    assert torch.equal(first, draw_seeds(cam, generator=_gen(7)))
    assert any(not torch.equal(first, draw_seeds(cam, generator=_gen(s))) for s in range(8, 12))


def test_probability_seeder_follows_the_cam() -> None:
    cam = torch.zeros(4, 4)
    cam[0, 0], cam[3, 3], cam[1, 2] = 0.9, 0.1, 0.0
    cam[2, 1] = 0.0
    cfg = SeedConfig(method="probability", n_fg=1, n_bg=0)
    generator = _gen()
    hits = torch.zeros(4, 4)
    for _ in range(400):
        hits += (draw_seeds(cam[None], config=cfg, generator=generator)[0] == 1).float()
    assert hits.sum() == 400
    assert hits[0, 0] + hits[3, 3] == 400  # never a zero-CAM pixel
    assert 320 < hits[0, 0] < 395  # about 90%
    two = draw_seeds(
        cam[None], config=SeedConfig(method="probability", n_fg=5), generator=generator
    )
    assert (two == 1).sum() == 2  # only two pixels have any CAM


def test_bad_seed_config() -> None:
    with pytest.raises(ConfigError, match="min_p"):
        SeedConfig(min_p=0.0)
    with pytest.raises(ConfigError, match="erode_k"):
        SeedConfig(erode_k=0)
    with pytest.raises(ConfigError, match="method"):
        SeedConfig(method="random")  # type: ignore[arg-type]


def test_augment_pair_moves_cam_with_image() -> None:
    cam = torch.zeros(4, 4)
    cam[0, 0] = 1.0
    cam[1, 3] = 0.5
    # an image whose first channel is the CAM seen at image resolution
    big = F.interpolate(cam[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0]
    image = torch.cat([big, torch.rand(2, 32, 32)])
    aug = GeometricAug(resize_px=32, crop_px=24, crop_xy=(5, 3), hflip=True, vflip=True)
    out_image, out_cam = augment_pair(image, cam, aug, feature_hw=(3, 3))
    assert out_image.shape == (3, 24, 24) and out_cam.shape == (3, 3)
    expected_image = image[:, 3:27, 5:29].flip(-1).flip(-2)
    assert torch.allclose(out_image, expected_image, atol=1e-5)
    expected_cam = F.interpolate(
        expected_image[None, :1], size=(3, 3), mode="bilinear", align_corners=False, antialias=True
    )[0, 0]
    assert torch.allclose(out_cam, expected_cam, atol=1e-5)
    assert out_cam[2, 2] == out_cam.max()  # the hot top-left corner, flipped both ways


def test_random_geometric_aug_stays_in_bounds() -> None:
    generator = _gen(3)
    augs = [random_geometric_aug(40, 32, generator=generator) for _ in range(50)]
    assert all(0 <= a.crop_xy[0] <= 8 and 0 <= a.crop_xy[1] <= 8 for a in augs)
    assert {a.hflip for a in augs} == {True, False}
    still = random_geometric_aug(40, 32, flips=False, generator=generator)
    assert not still.hflip and not still.vflip
    with pytest.raises(ConfigError, match="crop"):
        GeometricAug(resize_px=32, crop_px=24, crop_xy=(9, 0))
