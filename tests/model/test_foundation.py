"""Foundation encoders: every registered architecture built on the meta device (no memory), and
their weights path exercised end to end on tiny stand-ins registered the same way. Nothing is
downloaded: files are written into a temporary Hugging Face cache or a plain folder.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
import shutil
from pathlib import Path
from types import MappingProxyType

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch
from pydantic import ValidationError
from timm.layers import SwiGLUPacked
from torch import nn

from wsi_pixelcam.config import TrainConfig, TrainInputConfig
from wsi_pixelcam.errors import ModelError
from wsi_pixelcam.model import foundation
from wsi_pixelcam.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from wsi_pixelcam.model.encoders import (
    EncoderSpec,
    TokenEncoder,
    build_encoder,
    encoder_normalization,
)
from wsi_pixelcam.model.foundation import FoundationEncoder, strip_prefix
from wsi_pixelcam.model.pixelcam import PixelCAMSpec, build_pixelcam

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BIOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

# name -> (width, class + register tokens, patch, parameters) as the model cards publish them
PUBLISHED = {
    "uni": (1024, 1, 16, 303e6),
    "uni2-h": (1536, 9, 14, 681e6),
    "virchow2": (1280, 5, 14, 632e6),
    "h-optimus-0": (1536, 5, 14, 1.1e9),
    "h-optimus-1": (1536, 5, 14, 1.1e9),
    "prov-gigapath": (1536, 1, 16, 1.13e9),
    "phikon-v2": (1024, 1, 16, 300e6),
}


def _standin(
    name: str, prefix_tokens: int, key_format: str = "timm", **kwargs
) -> FoundationEncoder:
    return FoundationEncoder(
        name=name,
        arch="test_vit",
        kwargs=MappingProxyType({"num_classes": 0, "dynamic_img_size": True, **kwargs}),
        mean=(0.6, 0.5, 0.7),
        std=(0.2, 0.25, 0.15),
        prefix_tokens=prefix_tokens,
        patch_size=16,
        embed_dim=64,
        hf_repo=f"tiny-org/{name}",
        key_format=key_format,  # type: ignore[arg-type]
    )


# The token layouts of the real encoders on a 64-wide, 6-block ViT.
STANDINS = {
    "class token (UNI, GigaPath)": _standin("tiny-cls", 1, init_values=1e-5),
    "registers outside pos_embed (UNI2-h, H-optimus)": _standin(
        "tiny-reg",
        5,
        reg_tokens=4,
        no_embed_class=True,
        init_values=1e-5,
        mlp_layer=SwiGLUPacked,
        act_layer=nn.SiLU,
        mlp_ratio=4,
    ),
    "registers inside pos_embed (Virchow2)": _standin(
        "tiny-virchow",
        5,
        reg_tokens=4,
        init_values=1e-5,
        mlp_layer=SwiGLUPacked,
        act_layer=nn.SiLU,
        mlp_ratio=4,
    ),
}
DINOV2_HF = _standin("tiny-dinov2", 1, key_format="hf-dinov2", init_values=1e-5)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-ins registered beside the real encoders, so build_encoder finds them by name."""
    entries = {**foundation.FOUNDATION_ENCODERS}
    entries.update({e.name: e for e in [*STANDINS.values(), DINOV2_HF]})
    monkeypatch.setattr(foundation, "FOUNDATION_ENCODERS", MappingProxyType(entries))


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in place of this machine's."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _into_cache(cache: Path, repo: str, filename: str, state: dict[str, torch.Tensor]) -> Path:
    """The layout `hf download` leaves: refs/main names the snapshot holding the file."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    revision = "3f2a" * 10
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return _save(state, repo_dir / "snapshots" / revision / filename)


def _source(entry: FoundationEncoder) -> nn.Module:
    return timm.create_model(entry.arch, **entry.kwargs).eval()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_registered_architecture_on_meta(name: str) -> None:
    width, prefix, patch, params = PUBLISHED[name]
    with torch.device("meta"):
        encoder = build_encoder(name, pretrained=None)
        features = encoder(torch.empty(2, 3, 224, 112))
    assert isinstance(encoder, TokenEncoder)
    assert encoder.out_channels == width
    assert encoder.body.num_prefix_tokens == prefix
    assert encoder.reduction == patch
    assert features.shape == (2, width, 224 // patch, 112 // patch)
    # published counts are rounded; a wrong MLP (plain vs SwiGLU) is off by a third
    assert sum(p.numel() for p in encoder.parameters()) == pytest.approx(params, rel=0.05)


def test_registry_holds_the_published_encoders() -> None:
    assert set(foundation.FOUNDATION_ENCODERS) == set(PUBLISHED)
    repos = {e.name: e.hf_repo for e in foundation.FOUNDATION_ENCODERS.values()}
    assert repos["uni2-h"] == "MahmoodLab/UNI2-h"
    assert repos["prov-gigapath"] == "prov-gigapath/prov-gigapath"


def test_normalisation_follows_the_encoder() -> None:
    assert encoder_normalization("h-optimus-0") == BIOPTIMUS
    assert encoder_normalization("h-optimus-1") == BIOPTIMUS
    assert encoder_normalization("virchow2") == IMAGENET
    assert encoder_normalization("resnet50") == IMAGENET
    cfg = TrainConfig.model_validate(
        {"model": {"encoder": "h-optimus-0", "pretrained": "hf-cache"}}
    )
    assert cfg.model.pretrained_weights() is True
    assert cfg.input.mean is None and cfg.input.std is None
    assert cfg.input.normalization(encoder_normalization(cfg.model.encoder)) == BIOPTIMUS
    own = TrainInputConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert own.normalization(BIOPTIMUS) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(ValidationError, match="both mean and std"):
        TrainInputConfig(mean=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("standin", sorted(STANDINS))
@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.safetensors"])
@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("where", ["hf-cache", "file", "folder"])
def test_weights_load_exactly(
    standin: str, filename: str, prefix: str, where: str, tmp_path, hf_cache, registry
) -> None:
    entry = STANDINS[standin]
    source = _source(entry)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    pretrained: bool | Path = True
    if where == "hf-cache":
        _into_cache(hf_cache, entry.hf_repo, filename, state)
    else:
        path = _save(state, tmp_path / "download" / filename)
        pretrained = path if where == "file" else path.parent
    encoder = build_encoder(entry.name, pretrained=pretrained).eval()

    loaded = encoder.body.state_dict()
    assert loaded.keys() == source.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
    images = torch.randn(2, 3, 64, 48)
    features = encoder(images)
    assert features.shape == (2, 64, 4, 3)
    # the map is exactly the patch tokens: class and register tokens are dropped
    with torch.no_grad():
        tokens = source.forward_features(images)
    patches = features.flatten(2).transpose(1, 2)
    assert torch.allclose(patches, tokens[:, entry.prefix_tokens :], atol=1e-6)


def test_half_precision_file_gives_a_float_model(tmp_path, registry) -> None:
    entry = STANDINS["class token (UNI, GigaPath)"]
    state = {k: v.half() for k, v in _source(entry).state_dict().items()}
    path = _save(state, tmp_path / "model.safetensors")
    body = build_encoder(entry.name, pretrained=path).body
    assert body.pos_embed.dtype == torch.float32
    assert torch.equal(body.pos_embed, state["pos_embed"].float())


def test_prefixes_are_stripped_only_when_every_key_has_them() -> None:
    t = torch.zeros(1)
    assert set(strip_prefix({"module.backbone.a": t, "module.backbone.b": t})) == {"a", "b"}
    assert set(strip_prefix({"model.a": t, "model.b": t})) == {"a", "b"}
    assert set(strip_prefix({"model.a": t, "head.b": t})) == {"model.a", "head.b"}


def _as_transformers_dinov2(
    state: dict[str, torch.Tensor], depth: int, spelling: str
) -> dict[str, torch.Tensor]:
    """timm's keys in transformers' Dinov2Model names (4: the published files; 5: re-saved)."""
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return state[key]

    attn = "attention.attention." if spelling == "4" else "attention."
    q, k, v = ("query", "key", "value") if spelling == "4" else ("q_proj", "k_proj", "v_proj")
    out_proj = "attention.output.dense" if spelling == "4" else "attention.o_proj"
    hf = {
        "embeddings.cls_token": take("cls_token"),
        "embeddings.mask_token": torch.zeros(1, 64),
        "embeddings.position_embeddings": take("pos_embed"),
        "embeddings.patch_embeddings.projection.weight": take("patch_embed.proj.weight"),
        "embeddings.patch_embeddings.projection.bias": take("patch_embed.proj.bias"),
        "layernorm.weight": take("norm.weight"),
        "layernorm.bias": take("norm.bias"),
    }
    for i in range(depth):
        block, layer = f"blocks.{i}.", f"encoder.layer.{i}."
        for param in ("weight", "bias"):
            parts = take(f"{block}attn.qkv.{param}").chunk(3)
            for name, part in zip((q, k, v), parts, strict=True):
                hf[f"{layer}{attn}{name}.{param}"] = part
            hf[f"{layer}{out_proj}.{param}"] = take(f"{block}attn.proj.{param}")
            for module in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                hf[f"{layer}{module}.{param}"] = take(f"{block}{module}.{param}")
        hf[f"{layer}layer_scale1.lambda1"] = take(f"{block}ls1.gamma")
        hf[f"{layer}layer_scale2.lambda1"] = take(f"{block}ls2.gamma")
    assert used == set(state), "the stand-in must cover every timm tensor"
    return hf


@pytest.mark.parametrize("spelling", ["4", "5"])
def test_transformers_dinov2_keys_map_onto_timm(spelling: str, hf_cache, registry) -> None:
    source = _source(DINOV2_HF)
    state = source.state_dict()
    hf = _as_transformers_dinov2(state, len(source.blocks), spelling)
    _into_cache(hf_cache, DINOV2_HF.hf_repo, "model.safetensors", hf)
    encoder = build_encoder(DINOV2_HF.name, pretrained=True).eval()
    loaded = encoder.body.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    images = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(encoder.body.forward_features(images), source.forward_features(images))


def test_missing_weights_name_every_place_looked_in(tmp_path, hf_cache) -> None:
    with pytest.raises(ModelError) as info:
        build_encoder("uni2-h", pretrained=True)
    message = str(info.value)
    assert message.startswith("uni2-h: no weights file (model.safetensors or pytorch_model.bin)")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        assert f"{hf_cache}/models--MahmoodLab--UNI2-h/snapshots/" in message
        assert f"/{filename}" in message
    assert "hf download MahmoodLab/UNI2-h" in message
    assert "model.pretrained" in message

    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(ModelError) as info:
        build_encoder("virchow2", pretrained=folder)
    assert f"{folder / 'model.safetensors'}, {folder / 'pytorch_model.bin'}" in str(info.value)
    absent = tmp_path / "absent.bin"
    with pytest.raises(ModelError, match=f"looked in: {re.escape(str(absent))}"):
        build_encoder("virchow2", pretrained=absent)


def test_unfit_file_names_the_tensor_and_both_shapes(tmp_path, registry) -> None:
    # a tiny ViT's file given for UNI: checked against the real ViT-L, built on the meta device
    tiny = _save(_source(STANDINS["class token (UNI, GigaPath)"]).state_dict(), tmp_path / "a.bin")
    with pytest.raises(
        ModelError,
        match=r"a\.bin: does not fit uni: first mismatched tensor cls_token: \(1, 1, 64\) in "
        r"the file, \(1, 1, 1024\) in vit_large_patch16_224; .*MahmoodLab/UNI",
    ):
        build_encoder("uni", pretrained=tiny)

    entry = STANDINS["registers outside pos_embed (UNI2-h, H-optimus)"]
    state = _source(entry).state_dict()
    state["pos_embed"] = torch.zeros(1, 196, 64)
    del state["norm.bias"]
    state["head.weight"] = torch.zeros(2, 64)
    bad = _save(state, tmp_path / "b.safetensors")
    with pytest.raises(ModelError) as info:
        build_encoder(entry.name, pretrained=bad)
    assert str(info.value) == (
        f"{bad}: does not fit tiny-reg: first mismatched tensor pos_embed: (1, 196, 64) in the "
        "file, (1, 100, 64) in test_vit; 1 missing (first: norm.bias); 1 unexpected (first: "
        "head.weight) (expects the weights of tiny-org/tiny-reg)"
    )

    junk = tmp_path / "pytorch_model.bin"
    junk.write_text("not weights")
    with pytest.raises(ModelError, match=r"pytorch_model\.bin: cannot read it as uni's weights"):
        build_encoder("uni", pretrained=junk)


def test_foundation_encoder_needs_its_weights_and_no_cnn_options() -> None:
    with pytest.raises(ModelError, match=r"uni is a pathology foundation encoder.*hf-cache"):
        build_encoder("uni", pretrained=False)
    with pytest.raises(ModelError, match="vision transformer"):
        build_encoder("uni", pretrained=None, stride8_no_dilation=True)
    with pytest.raises(ModelError, match="did you mean uni2-h"):
        build_encoder("uni2h")


def test_checkpoint_rebuilds_without_the_weights_file(tmp_path, hf_cache, registry) -> None:
    entry = STANDINS["registers inside pos_embed (Virchow2)"]
    _into_cache(hf_cache, entry.hf_repo, "pytorch_model.bin", _source(entry).state_dict())
    model = build_pixelcam(PixelCAMSpec(EncoderSpec(entry.name), num_classes=2), pretrained=True)
    meta = CheckpointMeta(
        class_names=("normal", "tumour"),
        input_px=64,
        mean=entry.mean,
        std=entry.std,
        mpp=0.5,
        patch_px=64,
    )
    path = save_checkpoint(tmp_path / "model.pt", model, meta)
    shutil.rmtree(hf_cache)

    rebuilt, loaded_meta = load_checkpoint(path, expect_encoder=entry.name)
    assert rebuilt.spec == model.spec
    assert (loaded_meta.mean, loaded_meta.std) == (entry.mean, entry.std)
    saved = model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in rebuilt.state_dict().items())
