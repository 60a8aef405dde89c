"""Encoders: real tiny timm models, shapes checked against known strides."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch
from torch import nn

from wsi_pixelcam.errors import ModelError
from wsi_pixelcam.model.encoders import CnnEncoder, TokenEncoder, build_encoder


def _dilations(module: nn.Module) -> set[tuple[int, ...]]:
    return {tuple(m.dilation) for m in module.modules() if isinstance(m, nn.Conv2d)}


def test_cnn_gives_last_stage_map() -> None:
    encoder = build_encoder("test_resnet")
    assert isinstance(encoder, CnnEncoder)
    features = encoder(torch.randn(2, 3, 64, 64))
    assert encoder.reduction == 32
    assert features.shape == (2, encoder.out_channels, 2, 2)
    layer4 = {id(p) for p in encoder.body.layer4.parameters()}
    assert {id(p) for p in encoder.last_stage_params()} == layer4


def test_stride8_variant_has_no_dilation() -> None:
    encoder = build_encoder("test_resnet", stride8_no_dilation=True)
    assert encoder.reduction == 8
    assert encoder(torch.randn(1, 3, 64, 48)).shape[-2:] == (8, 6)
    assert _dilations(encoder) == {(1, 1)}
    # timm's output_stride=8 reaches the same grid by dilating, which the paper does not do
    dilated = build_encoder("test_resnet", output_stride=8)
    assert dilated.reduction == 8
    assert dilated(torch.randn(1, 3, 64, 64)).shape[-2:] == (8, 8)
    assert _dilations(dilated) - {(1, 1)}


def test_stride8_variant_on_plain_resnet18() -> None:
    encoder = build_encoder("resnet18", stride8_no_dilation=True)
    assert _dilations(encoder) == {(1, 1)}
    assert encoder(torch.randn(1, 3, 64, 64)).shape == (1, 512, 8, 8)


def test_vit_drops_prefix_tokens_and_keeps_grid() -> None:
    encoder = build_encoder("test_vit")
    assert isinstance(encoder, TokenEncoder)
    assert encoder.body.num_prefix_tokens == 1
    images = torch.randn(2, 3, 64, 48)
    features = encoder(images)
    assert encoder.reduction == 16
    assert features.shape == (2, encoder.out_channels, 4, 3)
    # the map is the normed patch tokens in row-major grid order, class token excluded
    tokens = encoder.body.forward_features(images)
    assert torch.equal(features.flatten(2).transpose(1, 2), tokens[:, 1:])
    assert torch.equal(features[:, :, 1, 2], tokens[:, 1 + 1 * 3 + 2])


def test_vit_last_stage_is_last_block_and_norm() -> None:
    encoder = build_encoder("test_vit")
    body = encoder.body
    expected = {id(p) for p in [*body.blocks[-1].parameters(), *body.norm.parameters()]}
    assert {id(p) for p in encoder.last_stage_params()} == expected


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ModelError, match="resnet50"):
        build_encoder("resnet5O")


def test_bad_option_combinations() -> None:
    with pytest.raises(ModelError, match="not both"):
        build_encoder("test_resnet", output_stride=8, stride8_no_dilation=True)
    with pytest.raises(ModelError, match="vision transformer"):
        build_encoder("test_vit", stride8_no_dilation=True)
    with pytest.raises(ModelError, match="ResNet-style"):
        build_encoder("test_convnext", stride8_no_dilation=True)


def test_offline_pretrained_download_says_use_a_file(tmp_path, monkeypatch) -> None:
    # an empty cache and no network, whatever this machine has downloaded before
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="local weights file"):
        build_encoder("test_resnet", pretrained=True)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_are_loaded(tmp_path, suffix: str) -> None:
    source = timm.create_model("test_resnet")
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".pth":
        torch.save(state, path)
    else:
        safetensors.torch.save_file(state, str(path))
    encoder = build_encoder("test_resnet", pretrained=path, stride8_no_dilation=True)
    assert torch.equal(encoder.body.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert torch.equal(encoder.body.bn1.running_var, source.bn1.running_var)


def test_local_vit_weights_are_loaded(tmp_path) -> None:
    source = timm.create_model("test_vit")
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    encoder = build_encoder("test_vit", pretrained=path)
    assert torch.equal(encoder.body.pos_embed, source.pos_embed)
    assert torch.equal(encoder.body.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_local_weights_that_do_not_fit(tmp_path) -> None:
    other = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit").state_dict(), other)
    with pytest.raises(ModelError, match=r"vit\.pth.*missing.*unexpected.*blocks\.0"):
        build_encoder("test_resnet", pretrained=other)

    state = timm.create_model("test_resnet").state_dict()
    state["layer4.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    del state["bn1.weight"]
    bad = tmp_path / "resnet.pth"
    torch.save(state, bad)
    with pytest.raises(ModelError, match=r"missing \(1\): bn1\.weight.*shape.*layer4\.0\.conv1"):
        build_encoder("test_resnet", pretrained=bad)

    junk = tmp_path / "junk.pth"
    junk.write_text("not weights")
    with pytest.raises(ModelError, match=r"junk\.pth: cannot read"):
        build_encoder("test_resnet", pretrained=junk)
    with pytest.raises(ModelError, match="not found"):
        build_encoder("test_resnet", pretrained=tmp_path / "absent.pth")
