"""The PixelCAM network: output shapes, gradient flow, heads and parameter groups."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from wsi_pixelcam.errors import ModelError
from wsi_pixelcam.model.encoders import EncoderSpec, build_encoder
from wsi_pixelcam.model.pixelcam import PixelCAM, PixelCAMSpec, build_pixelcam


@pytest.fixture(scope="module")
def cnn() -> PixelCAM:
    torch.manual_seed(0)
    return PixelCAM(build_encoder("test_resnet", stride8_no_dilation=True), num_classes=3)


@pytest.mark.parametrize(("name", "grid"), [("test_resnet", (4, 4)), ("test_vit", (2, 2))])
def test_shapes_and_gradients_reach_both_heads(name: str, grid: tuple[int, int]) -> None:
    options = {"stride8_no_dilation": True} if name == "test_resnet" else {}
    model = PixelCAM(build_encoder(name, **options), num_classes=3)
    out = model(torch.randn(2, 3, 32, 32))
    channels = model.encoder.out_channels
    assert out.image_logits.shape == (2, 3)
    assert out.pixel_logits.shape == (2, 2, *grid)
    assert out.features.shape == (2, channels, *grid)
    (out.image_logits.sum() + out.pixel_logits.sum()).backward()
    for param in [*model.classifier.parameters(), *model.pixel_head.parameters()]:
        assert param.grad is not None and param.grad.abs().sum() > 0
    first = next(model.encoder.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_pixel_head_is_one_1x1_conv(cnn: PixelCAM) -> None:
    channels = cnn.encoder.out_channels
    assert sum(p.numel() for p in cnn.pixel_head.parameters()) == 2 * channels + 2
    feats = torch.randn(1, channels, 3, 5)
    expected = torch.einsum("kc,bchw->bkhw", cnn.pixel_head.weight[:, :, 0, 0], feats)
    expected = expected + cnn.pixel_head.bias[None, :, None, None]
    assert torch.allclose(cnn.pixel_head(feats), expected, atol=1e-5)


def test_image_head_is_gap_then_linear(cnn: PixelCAM) -> None:
    cnn.eval()
    out = cnn(torch.randn(2, 3, 32, 32))
    expected = F.linear(out.features.mean(dim=(2, 3)), cnn.classifier.weight, cnn.classifier.bias)
    assert torch.allclose(out.image_logits, expected, atol=1e-5)


def test_dropout_touches_the_image_branch_only() -> None:
    torch.manual_seed(1)
    model = PixelCAM(build_encoder("test_resnet", stride8_no_dilation=True), 2, dropout=0.5)
    model.train()
    for module in model.encoder.modules():
        module.eval()  # freeze BN statistics so two passes see identical features
    images = torch.randn(2, 3, 32, 32)
    first, second = model(images), model(images)
    assert torch.equal(first.pixel_logits, second.pixel_logits)
    assert not torch.equal(first.image_logits, second.image_logits)


def test_foreground_map_is_upsampled_probability() -> None:
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 10.0  # confident foreground in the top-left cell only
    fmap = PixelCAM.foreground_map(logits, (8, 8))
    assert fmap.shape == (1, 8, 8)
    assert 0.0 <= fmap.min() and fmap.max() <= 1.0
    assert fmap[0, 0, 0] > 0.99 and abs(fmap[0, 7, 7].item() - 0.5) < 1e-6


def test_param_groups_put_last_stage_and_heads_at_10x(cnn: PixelCAM) -> None:
    groups = {g["name"]: g for g in cnn.param_groups(base_lr=1e-3)}
    assert groups["encoder"]["lr"] == pytest.approx(1e-3)
    assert groups["last_stage_and_heads"]["lr"] == pytest.approx(1e-2)
    fast = {id(p) for p in groups["last_stage_and_heads"]["params"]}
    expected = [
        *cnn.encoder.body.layer4.parameters(),
        *cnn.classifier.parameters(),
        *cnn.pixel_head.parameters(),
    ]
    assert fast == {id(p) for p in expected}
    slow = {id(p) for p in groups["encoder"]["params"]}
    assert not slow & fast
    assert slow | fast == {id(p) for p in cnn.parameters()}
    torch.optim.SGD(cnn.param_groups(1e-3), lr=1e-3, momentum=0.9, nesterov=True)


def test_build_from_spec_and_bad_heads() -> None:
    spec = PixelCAMSpec(EncoderSpec("test_resnet", stride8_no_dilation=True), 4, 0.1)
    model = build_pixelcam(spec)
    assert model.spec == spec
    with pytest.raises(ModelError, match="num_classes=1"):
        PixelCAM(model.encoder, 1)
    with pytest.raises(ModelError, match="dropout"):
        PixelCAM(model.encoder, 2, dropout=1.0)
