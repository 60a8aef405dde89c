"""Train/eval transforms: geometry moves image and CAM together, colour touches the image only."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import rgb2hsv
from torchvision.transforms.v2 import functional as TF

from wsi_pixelcam.data.transforms import EvalTransform, TrainTransform, rotate_hue
from wsi_pixelcam.training.loop import SharedGeometry

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _unnormalise(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]


def test_eval_transform_resizes_and_normalises() -> None:
    patch = np.full((48, 48, 3), (255, 0, 128), np.uint8)
    cam = np.random.default_rng(0).random((6, 6)).astype(np.float16)
    image, out_cam = EvalTransform(32, MEAN, STD)(patch, cam)
    assert image.shape == (3, 32, 32)
    assert torch.allclose(
        _unnormalise(image)[:, 5, 7], torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-5
    )
    assert out_cam is not None and torch.equal(out_cam, torch.from_numpy(cam.astype(np.float32)))


def test_geometry_keeps_the_cam_on_the_pixels_it_came_from() -> None:
    """The image's red channel is the CAM, upsampled: after any crop/flip it must still be."""
    torch.manual_seed(0)
    grid = 8
    yy, xx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    cam = (2 * xx + yy).float() / (3 * (grid - 1))  # a ramp: any flip or shift changes it
    red = F.interpolate(cam[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    patch = (torch.stack([red, torch.zeros_like(red), torch.zeros_like(red)], -1) * 255).round()
    transform = TrainTransform(SharedGeometry(72, 64, True, (grid, grid)), (0, 0, 0, 0), MEAN, STD)
    errors, moved = [], 0
    for _ in range(10):
        image, out_cam = transform(patch.numpy().astype(np.uint8), cam.numpy())
        assert out_cam is not None and out_cam.shape == (grid, grid)
        seen = _unnormalise(image)[:1][None]
        seen_red = F.interpolate(seen, size=(grid, grid), mode="bilinear", antialias=True)[0, 0]
        errors.append((seen_red - out_cam).abs().max().item())
        moved += int((out_cam - cam).abs().max() > 0.2)
    assert max(errors) < 0.03
    assert moved >= 5  # the augmentation really moved things


def test_colour_jitter_changes_the_image_not_the_cam() -> None:
    rng = np.random.default_rng(1)
    patch = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    cam = rng.random((5, 5)).astype(np.float32)
    plain = TrainTransform(SharedGeometry(40, 40, False, (5, 5)), (0, 0, 0, 0), MEAN, STD)
    jitter = TrainTransform(SharedGeometry(40, 40, False, (5, 5)), (0.5, 0.5, 0.5, 0.05), MEAN, STD)
    image_a, cam_a = plain(patch, cam)
    torch.manual_seed(3)
    image_b, cam_b = jitter(patch, cam)
    assert cam_a is not None and cam_b is not None and torch.allclose(cam_a, cam_b)
    assert (image_a - image_b).abs().mean() > 0.05
    # no crop (resize == input), no flips: the un-jittered image is the patch itself
    expected = torch.from_numpy(patch).permute(2, 0, 1).float() / 255
    assert torch.allclose(_unnormalise(image_a), expected, atol=2e-2)


def test_teacher_transform_without_cam() -> None:
    patch = np.zeros((32, 32, 3), np.uint8)
    transform = TrainTransform(
        SharedGeometry(36, 32, True, (1, 1)), (0.5, 0.5, 0.5, 0.05), MEAN, STD
    )
    image, cam = transform(patch, None)
    assert image.shape == (3, 32, 32) and cam is None


def test_hue_rotation_turns_tissue_colours_like_torchvision() -> None:
    pinks = torch.tensor([[0.85, 0.55, 0.75], [0.55, 0.35, 0.65], [0.9, 0.7, 0.8], [0.7, 0.3, 0.5]])
    image = pinks.T[:, :, None].expand(3, 4, 4).contiguous()
    assert torch.allclose(rotate_hue(image, 0.0), image, atol=1e-6)

    def hue(x: torch.Tensor) -> np.ndarray:
        return rgb2hsv(x.permute(1, 2, 0).numpy())[:, 0, 0]

    for factor in (0.05, -0.05, 0.02):
        ours = (hue(rotate_hue(image, factor)) - hue(image) + 0.5) % 1 - 0.5
        theirs = (hue(TF.adjust_hue(image, factor)) - hue(image) + 0.5) % 1 - 0.5
        assert np.allclose(theirs, factor, atol=1e-3)
        assert ((ours / theirs > 0.6) & (ours / theirs < 1.5)).all()


def test_stain_jitter_scales_and_shifts_each_stain_within_sigma() -> None:
    """In HED space the jitter is affine per stain: c' = a c + b, |a - 1| <= s, |b| <= s."""
    from skimage.color import rgb2hed

    from wsi_pixelcam.data.transforms import jitter_stains

    colours = torch.tensor([[0.45, 0.25, 0.55], [0.7, 0.4, 0.55]])  # haematoxylin, eosin
    image = colours.T[:, :, None].expand(3, 2, 4).contiguous()
    assert torch.allclose(jitter_stains(image, 0.0), image, atol=1e-5)
    torch.manual_seed(3)
    sigma = 0.05
    before = rgb2hed(image.permute(1, 2, 0).numpy())[:, 0]
    after = rgb2hed(jitter_stains(image, sigma).permute(1, 2, 0).numpy())[:, 0]
    scale = (after[1] - after[0]) / (before[1] - before[0])
    shift = after[0] - scale * before[0]
    assert np.all(np.abs(scale - 1) <= sigma + 1e-3) and np.all(np.abs(shift) <= sigma + 1e-3)
    assert np.abs(scale - 1).max() > 1e-3  # it did change the stains


def test_train_transform_applies_stain_jitter_only_when_asked() -> None:
    patch = np.random.default_rng(0).integers(60, 200, (16, 16, 3), dtype=np.uint8)
    geometry = SharedGeometry(16, 16, False, (2, 2))
    plain = TrainTransform(geometry, (0, 0, 0, 0), MEAN, STD)
    stained = TrainTransform(geometry, (0, 0, 0, 0), MEAN, STD, hed=0.2)
    torch.manual_seed(0)
    image, _ = plain(patch)
    torch.manual_seed(0)
    jittered, _ = stained(patch)
    assert torch.allclose(
        _unnormalise(image), torch.from_numpy(patch).permute(2, 0, 1) / 255, atol=1e-5
    )
    assert not torch.allclose(image, jittered, atol=1e-3)
