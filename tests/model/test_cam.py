"""CAM flavours against closed forms: with a GAP + linear head, d(score)/dA = w_c / (h*w)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from wsi_pixelcam.cam_method import CamMethod
from wsi_pixelcam.errors import ModelError
from wsi_pixelcam.model.cam import compute_cam, minmax_normalise, upsample_map
from wsi_pixelcam.model.encoders import build_encoder
from wsi_pixelcam.model.pixelcam import PixelCAM


@pytest.fixture(scope="module")
def model() -> PixelCAM:
    torch.manual_seed(0)
    return PixelCAM(build_encoder("test_resnet", stride8_no_dilation=True), 3).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _manual_minmax(maps: torch.Tensor) -> torch.Tensor:
    out = []
    for one in maps:
        span = one.max() - one.min()
        out.append((one - one.min()) / span if span > 0 else torch.zeros_like(one))
    return torch.stack(out)


@pytest.mark.parametrize("method", list(CamMethod))
def test_maps_are_in_unit_range_at_feature_resolution(model, images, method) -> None:
    maps = compute_cam(model, images, torch.tensor([0, 1, 2]), method)
    assert maps.shape == (3, 4, 4)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert not maps.requires_grad


def test_cam_is_classifier_weighted_features(model, images) -> None:
    classes = torch.tensor([2, 0, 1])
    with torch.no_grad():
        feats = model.encoder(images)
    raw = torch.stack(
        [
            (model.classifier.weight[c][:, None, None] * f).sum(0)
            for c, f in zip(classes, feats, strict=True)
        ]
    )
    expected = _manual_minmax(raw)
    assert torch.allclose(compute_cam(model, images, classes, "cam"), expected, atol=1e-5)


def test_layercam_and_gradcampp_closed_forms(model, images) -> None:
    with torch.no_grad():
        feats = model.encoder(images)
    h, w = feats.shape[-2:]
    grads = (model.classifier.weight[1] / (h * w))[None, :, None, None].expand_as(feats)
    layer = torch.relu((torch.relu(grads) * feats).sum(1))
    assert torch.allclose(
        compute_cam(model, images, 1, "layercam"), _manual_minmax(layer), atol=1e-5
    )
    sums = feats.sum(dim=(2, 3), keepdim=True)
    alpha = grads**2 / (2 * grads**2 + sums * grads**3)
    weights = (alpha * torch.relu(grads)).sum(dim=(2, 3), keepdim=True)
    plus = torch.relu((weights * feats).sum(1))
    assert torch.allclose(
        compute_cam(model, images, 1, "gradcampp"), _manual_minmax(plus), atol=1e-5
    )


def test_constant_maps_become_zeros() -> None:
    maps = torch.stack([torch.full((3, 3), 7.0), torch.arange(9.0).view(3, 3)])
    out = minmax_normalise(maps)
    assert torch.equal(out[0], torch.zeros(3, 3))
    assert out[1].min() == 0 and out[1].max() == 1


def test_upsample_map_and_unknown_method(model, images) -> None:
    maps = compute_cam(model, images, 0)
    big = upsample_map(maps, (32, 32))
    assert big.shape == (3, 32, 32)
    assert big.min() >= 0.0 and big.max() <= 1.0
    with pytest.raises(ModelError, match="gradcampp"):
        compute_cam(model, images, 0, "scorecam")  # type: ignore[arg-type]
