"""Pathology foundation encoders by name: their timm architecture and their weights file.

The weights are gated downloads that users fetch themselves, so nothing here ever downloads:
a file comes from an explicit path or from the Hugging Face cache as ``hf download`` fills it
(``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ``~/.cache/huggingface/hub``). A file must fit its
architecture exactly, after a wrapper's key prefix is stripped and, for a model published in
transformers' format, its keys are renamed to timm's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import huggingface_hub
import safetensors.torch
import timm
import torch
from huggingface_hub.file_download import repo_folder_name
from timm.layers import SwiGLUPacked
from torch import nn

from wsi_pixelcam.errors import ModelError

RGB = tuple[float, float, float]
IMAGENET_MEAN: RGB = (0.485, 0.456, 0.406)
IMAGENET_STD: RGB = (0.229, 0.224, 0.225)
# Bioptimus' own statistics, from the H-optimus model cards
_BIOPTIMUS_MEAN: RGB = (0.707223, 0.578729, 0.703617)
_BIOPTIMUS_STD: RGB = (0.211883, 0.230117, 0.177517)

# Wrappers that training code puts around a model's keys (DataParallel, Lightning, SSL heads).
KNOWN_PREFIXES = ("module.", "model.", "backbone.")


@dataclass(frozen=True)
class FoundationEncoder:
    """One published encoder: how timm builds it, how it is fed, where its weights live.

    ``prefix_tokens`` (class plus register tokens), ``patch_size`` and ``embed_dim`` are the
    published layout; a build that disagrees (another timm version) is refused rather than
    trained. ``key_format`` is "timm" or "hf-dinov2" (transformers' Dinov2Model names).
    """

    name: str
    arch: str
    kwargs: MappingProxyType[str, Any]
    mean: RGB
    std: RGB
    prefix_tokens: int
    patch_size: int
    embed_dim: int
    hf_repo: str
    filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    key_format: Literal["timm", "hf-dinov2"] = "timm"


def _kwargs(**kwargs: Any) -> MappingProxyType[str, Any]:
    return MappingProxyType(kwargs)


# The kwargs are the model cards' and hub configs'; dynamic_img_size=True everywhere (the cards
# of H-optimus set False) lets the feature grid follow any input that is a multiple of the patch.
_H_OPTIMUS_KWARGS = _kwargs(
    img_size=224, init_values=1e-5, num_classes=0, global_pool="token", dynamic_img_size=True
)
FOUNDATION_ENCODERS: MappingProxyType[str, FoundationEncoder] = MappingProxyType(
    {
        e.name: e
        for e in (
            FoundationEncoder(
                name="uni",
                arch="vit_large_patch16_224",
                kwargs=_kwargs(
                    img_size=224,
                    patch_size=16,
                    init_values=1e-5,
                    num_classes=0,
                    dynamic_img_size=True,
                ),
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                prefix_tokens=1,
                patch_size=16,
                embed_dim=1024,
                hf_repo="MahmoodLab/UNI",
            ),
            FoundationEncoder(
                name="uni2-h",
                arch="vit_giant_patch14_224",
                kwargs=_kwargs(
                    img_size=224,
                    patch_size=14,
                    depth=24,
                    num_heads=24,
                    init_values=1e-5,
                    embed_dim=1536,
                    mlp_ratio=2.66667 * 2,
                    num_classes=0,
                    no_embed_class=True,
                    mlp_layer=SwiGLUPacked,
                    act_layer=nn.SiLU,
                    reg_tokens=8,
                    dynamic_img_size=True,
                ),
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                prefix_tokens=9,
                patch_size=14,
                embed_dim=1536,
                hf_repo="MahmoodLab/UNI2-h",
            ),
            FoundationEncoder(
                name="virchow2",
                arch="vit_huge_patch14_224",
                kwargs=_kwargs(
                    img_size=224,
                    init_values=1e-5,
                    num_classes=0,
                    reg_tokens=4,
                    mlp_ratio=5.3375,
                    global_pool="",
                    dynamic_img_size=True,
                    mlp_layer=SwiGLUPacked,
                    act_layer=nn.SiLU,
                ),
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                prefix_tokens=5,
                patch_size=14,
                embed_dim=1280,
                hf_repo="paige-ai/Virchow2",
            ),
            FoundationEncoder(
                name="h-optimus-0",
                arch="vit_giant_patch14_reg4_dinov2",
                kwargs=_H_OPTIMUS_KWARGS,
                mean=_BIOPTIMUS_MEAN,
                std=_BIOPTIMUS_STD,
                prefix_tokens=5,
                patch_size=14,
                embed_dim=1536,
                hf_repo="bioptimus/H-optimus-0",
            ),
            FoundationEncoder(
                name="h-optimus-1",
                arch="vit_giant_patch14_reg4_dinov2",
                kwargs=_H_OPTIMUS_KWARGS,
                mean=_BIOPTIMUS_MEAN,
                std=_BIOPTIMUS_STD,
                prefix_tokens=5,
                patch_size=14,
                embed_dim=1536,
                hf_repo="bioptimus/H-optimus-1",
            ),
            FoundationEncoder(
                name="prov-gigapath",
                arch="vit_giant_patch14_dinov2",
                kwargs=_kwargs(
                    img_size=224,
                    in_chans=3,
                    patch_size=16,
                    embed_dim=1536,
                    depth=40,
                    num_heads=24,
                    init_values=1e-5,
                    mlp_ratio=5.33334,
                    num_classes=0,
                    dynamic_img_size=True,
                ),
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                prefix_tokens=1,
                patch_size=16,
                embed_dim=1536,
                hf_repo="prov-gigapath/prov-gigapath",
            ),
            # A DINOv2 ViT-L/16 saved as transformers' Dinov2Model; its keys are renamed.
            FoundationEncoder(
                name="phikon-v2",
                arch="vit_large_patch16_224",
                kwargs=_kwargs(
                    img_size=224,
                    patch_size=16,
                    init_values=1e-5,
                    num_classes=0,
                    dynamic_img_size=True,
                ),
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                prefix_tokens=1,
                patch_size=16,
                embed_dim=1024,
                hf_repo="owkin/phikon-v2",
                key_format="hf-dinov2",
            ),
        )
    }
)


def foundation_encoder(name: str) -> FoundationEncoder | None:
    """The registered encoder called ``name``, or None for any other (a plain timm model)."""
    return FOUNDATION_ENCODERS.get(name)


def find_weights(encoder: FoundationEncoder, source: Path | None = None) -> Path:
    """The weights file of ``encoder``: ``source`` or, when None, the Hugging Face cache.

    ``source`` is the file itself or a folder holding one of ``encoder.filenames``. The cache
    is only read (never filled): the snapshot its ``main`` ref names, as ``hf download`` leaves
    it. Raises ModelError naming every place looked in and how to provide the file.
    """
    if source is not None:
        candidates = [source / f for f in encoder.filenames] if source.is_dir() else [source]
        found = next((c for c in candidates if c.is_file()), None)
        if found is not None:
            return found
        looked = [str(c) for c in candidates]
    else:
        cache = Path(huggingface_hub.constants.HF_HUB_CACHE)
        for filename in encoder.filenames:
            hit = huggingface_hub.try_to_load_from_cache(encoder.hf_repo, filename, cache_dir=cache)
            if isinstance(hit, str):
                return Path(hit)
        repo_dir = cache / repo_folder_name(repo_id=encoder.hf_repo, repo_type="model")
        looked = [f"{repo_dir}/snapshots/<revision of refs/main>/{f}" for f in encoder.filenames]
    raise ModelError(
        f"{encoder.name}: no weights file ({' or '.join(encoder.filenames)}); looked in: "
        + ", ".join(looked)
        + f". Download it where the network is reachable (accept the terms on "
        f"https://huggingface.co/{encoder.hf_repo}, then `hf download {encoder.hf_repo} "
        f"{encoder.filenames[-1]}`) and either copy that Hugging Face cache here (HF_HUB_CACHE "
        "or HF_HOME point to it) with model.pretrained: hf-cache, or set model.pretrained to "
        "the file's path"
    )


def create_body(encoder: FoundationEncoder, weights: Path | None = None) -> Any:
    """The timm model of ``encoder``: randomly initialised, or holding exactly ``weights``.

    With weights, the model is built on the meta device and takes the file's tensors as they
    are read, so the (up to 4.5 GB) weights are held once and no random draw is wasted. Raises
    ModelError when timm cannot build it or the file cannot be read or does not fit.
    """
    if weights is None:
        return _create(encoder)
    state = read_weights(encoder, weights)
    with torch.device("meta"):
        body = _create(encoder)
    expected = body.state_dict()
    _check_fit(encoder, weights, state, expected)
    # a file in half precision still gives a model in the architecture's own dtype
    body.load_state_dict(
        {k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True, assign=True
    )
    return body


def read_weights(encoder: FoundationEncoder, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` under timm's key names for ``encoder``."""
    try:
        if path.suffix == ".safetensors":
            state = safetensors.torch.load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load / safetensors raise many types for a bad file
        raise ModelError(
            f"{path}: cannot read it as {encoder.name}'s weights ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    state = strip_prefix(state)
    return _from_hf_dinov2(path, state) if encoder.key_format == "hf-dinov2" else state


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the :data:`KNOWN_PREFIXES` that all of its keys share (nested too)."""
    while True:
        prefix = next(
            (p for p in KNOWN_PREFIXES if state and all(k.startswith(p) for k in state)), None
        )
        if prefix is None:
            return state
        state = {k[len(prefix) :]: v for k, v in state.items()}


def _create(encoder: FoundationEncoder) -> Any:
    try:
        body = timm.create_model(encoder.arch, pretrained=False, **encoder.kwargs)
    except Exception as exc:  # constructors raise many types; all mean "cannot build"
        raise ModelError(
            f"{encoder.name}: timm cannot build {encoder.arch} ({type(exc).__name__}: {exc})"
        ) from exc
    _check_layout(encoder, body)
    return body


def _check_layout(encoder: FoundationEncoder, body: Any) -> None:
    built = (int(body.num_prefix_tokens), int(body.patch_embed.patch_size[0]), body.num_features)
    published = (encoder.prefix_tokens, encoder.patch_size, encoder.embed_dim)
    if built != published:
        raise ModelError(
            f"{encoder.name}: timm {timm.__version__} builds {encoder.arch} with (prefix "
            f"tokens, patch, width) {built}, not the published {published}"
        )


def _check_fit(
    encoder: FoundationEncoder,
    path: Path,
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
) -> None:
    """Strict: every tensor of the architecture, with its shape, and nothing else."""
    problems = []
    wrong = next((k for k, v in expected.items() if k in state and state[k].shape != v.shape), None)
    if wrong is not None:
        problems.append(
            f"first mismatched tensor {wrong}: {tuple(state[wrong].shape)} in the file, "
            f"{tuple(expected[wrong].shape)} in {encoder.arch}"
        )
    for label, keys in (
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
    ):
        if keys:
            problems.append(f"{len(keys)} {label} (first: {keys[0]})")
    if problems:
        raise ModelError(
            f"{path}: does not fit {encoder.name}: "
            + "; ".join(problems)
            + f" (expects the weights of {encoder.hf_repo})"
        )


# transformers' Dinov2Model -> timm's VisionTransformer. Per-layer module names in both
# transformers 4 (the published files) and 5 spellings; query/key/value fuse into one qkv.
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_TRAINING_ONLY = {"embeddings.mask_token"}
_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(\w+)")
_HF_MODULES = {
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
}
_HF_PARAMS = {"lambda1": "gamma"}
_HF_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}


def _from_hf_dinov2(path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename; keys that are not Dinov2Model's stay as they are for the fit check to report."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _HF_TRAINING_ONLY:
            continue
        match = _HF_LAYER.fullmatch(key)
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
        elif match is None:
            out[key] = value
        elif match[2] in _HF_QKV:
            qkv.setdefault((match[1], match[3]), {})[_HF_QKV[match[2]]] = value
        else:
            module = _HF_MODULES.get(match[2], match[2])
            out[f"blocks.{match[1]}.{module}.{_HF_PARAMS.get(match[3], match[3])}"] = value
    for (block, param), parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise ModelError(
                f"{path}: layer {block} has attention {param} for {sorted(parts)} only, "
                "not query, key and value"
            )
        out[f"blocks.{block}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
