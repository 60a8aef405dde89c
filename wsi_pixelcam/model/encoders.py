"""timm backbones seen through one interface: an image batch in, one (B, C, h, w) map out.

PixelCAM needs the encoder's last spatial feature map and nothing else, whether the backbone is
a CNN (timm ``features_only``, last stage) or a vision transformer (patch tokens after the final
norm, reshaped to their grid). The paper's ResNet variant, with layer3 and layer4 at stride 1
*without* dilation, is a build option distinct from timm's dilated ``output_stride=8``.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from wsi_pixelcam.errors import ModelError
from wsi_pixelcam.model.foundation import (
    FOUNDATION_ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RGB,
    FoundationEncoder,
    create_body,
    find_weights,
    foundation_encoder,
)
from wsi_pixelcam.model.weights import WEIGHT_SOURCES, remap_to_timm, source_file

logger = logging.getLogger(__name__)

_MAX_KEYS_SHOWN = 5


@dataclass(frozen=True)
class EncoderSpec:
    """What rebuilds an encoder's architecture (weights travel separately, in a checkpoint)."""

    name: str
    output_stride: int | None = None
    stride8_no_dilation: bool = False


class Encoder(nn.Module):
    """A backbone whose forward returns one (B, out_channels, h, w) feature map.

    ``reduction`` is the number of input pixels per feature cell along each axis.
    """

    body: Any  # the timm model; typed loosely because timm's attributes vary by architecture

    def __init__(self, spec: EncoderSpec, body: nn.Module, out_channels: int, reduction: int):
        super().__init__()
        self.spec = spec
        self.body = body
        self.out_channels = out_channels
        self.reduction = reduction

    def last_stage_params(self) -> list[nn.Parameter]:
        """Parameters of the last encoder stage (the paper trains them at 10x the base LR)."""
        raise NotImplementedError


class CnnEncoder(Encoder):
    """A timm ``features_only`` CNN reduced to its last stage."""

    def __init__(
        self,
        spec: EncoderSpec,
        body: nn.Module,
        out_channels: int,
        reduction: int,
        last_stage: str,
    ):
        super().__init__(spec, body, out_channels, reduction)
        self._last_stage = last_stage
        self._channels_last = getattr(body, "output_fmt", "NCHW") == "NHWC"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.body(images)[-1]
        if self._channels_last:
            features = features.permute(0, 3, 1, 2)
        return features

    def last_stage_params(self) -> list[nn.Parameter]:
        return list(self.body.get_submodule(self._last_stage).parameters())


class TokenEncoder(Encoder):
    """A timm vision transformer whose patch tokens, after the final norm, form the map.

    Prefix tokens (class, distillation, register) are dropped; the grid comes from the patch
    embedding, so non-square and (for dynamic-size models) any multiple of the patch size work.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.body.forward_features(images)
        height, width = images.shape[-2:]
        embed = self.body.patch_embed
        if getattr(self.body, "dynamic_img_size", False):
            grid_h, grid_w = embed.dynamic_feat_size((height, width))
        else:
            grid_h, grid_w = embed.grid_size
        patches = tokens[:, self.body.num_prefix_tokens :]
        if patches.shape[1] != grid_h * grid_w:
            raise ModelError(
                f"{self.spec.name}: {patches.shape[1]} patch tokens do not form the expected "
                f"{grid_h}x{grid_w} grid for a {height}x{width} input"
            )
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, grid_h, grid_w)

    def last_stage_params(self) -> list[nn.Parameter]:
        params = list(self.body.blocks[-1].parameters())
        norm = getattr(self.body, "norm", None)
        if isinstance(norm, nn.Module):
            params += list(norm.parameters())
        return params


def build_encoder(
    name: str,
    *,
    pretrained: bool | str | Path | None = False,
    output_stride: int | None = None,
    stride8_no_dilation: bool = False,
) -> Encoder:
    """Build the timm backbone ``name`` as an :class:`Encoder`.

    ``pretrained``: False (random init), True (timm's published weights; needs the network or
    the Hugging Face cache), a source named in weights.WEIGHT_SOURCES ("imagenet": a pip
    package's file, see weights.source_encoders) or a path to a local state dict in timm's key
    format (.pth/.pt/.bin/.safetensors). ``output_stride`` is timm's (dilated) setting for
    CNNs; ``stride8_no_dilation`` is the paper's ResNet variant (layer3/layer4 at stride 1, no
    dilation). Raises ModelError for unknown names, unusable options or unfit weights.

    A pathology foundation encoder (``foundation.FOUNDATION_ENCODERS``: uni, uni2-h...) is
    built from its registry entry and needs its published weights: True reads them from the
    local Hugging Face cache, a path names the file (or its folder); False is refused, since
    nobody means to train one from random weights. ``pretrained=None`` builds any encoder's
    bare architecture for weights that come from elsewhere (a checkpoint).
    """
    spec = EncoderSpec(name, output_stride, stride8_no_dilation)
    foundation = foundation_encoder(name)
    if foundation is not None:
        return _foundation(spec, foundation, pretrained)
    if pretrained is None:
        pretrained = False
    _check_name(name)
    if output_stride is not None and stride8_no_dilation:
        raise ModelError(
            f"{name}: choose either output_stride={output_stride} (dilated) or "
            "stride8_no_dilation (the paper's ResNet), not both"
        )
    probe = _create(name, device="meta")
    is_token_model = hasattr(probe, "num_prefix_tokens") and hasattr(probe, "patch_embed")
    kwargs: dict[str, Any] = {}
    if is_token_model:
        _check_vit_options(spec)
        kwargs["num_classes"] = 0
        if hasattr(probe, "dynamic_img_size"):
            kwargs["dynamic_img_size"] = True
    else:
        kwargs.update(features_only=True, out_indices=(-1,))
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
    kwargs.update(_pretrained_kwargs(name, pretrained, probe))
    hint = ""
    if pretrained is True:
        hint = (
            "; timm's pretrained weights could not be loaded: without network access, pass "
            "the path of a local weights file instead"
        )
    elif pretrained is not False:
        hint = f" (while loading weights from {pretrained})"
    body = _create(name, hint, **kwargs)
    if is_token_model:
        return TokenEncoder(spec, body, int(body.num_features), int(body.patch_embed.feat_ratio()))
    reduction = int(body.feature_info.reduction()[-1])
    if stride8_no_dilation:
        reduction //= _remove_late_strides(name, body)
    return CnnEncoder(
        spec,
        body,
        int(body.feature_info.channels()[-1]),
        reduction,
        _locate_last_stage(name, body),
    )


def encoder_normalization(name: str) -> tuple[RGB, RGB]:
    """The input (mean, std) of encoder ``name``: a foundation encoder's own, else ImageNet's."""
    foundation = foundation_encoder(name)
    if foundation is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return foundation.mean, foundation.std


def _foundation(
    spec: EncoderSpec, foundation: FoundationEncoder, pretrained: bool | str | Path | None
) -> TokenEncoder:
    _check_vit_options(spec)
    if pretrained is False:
        raise ModelError(
            f"{spec.name} is a pathology foundation encoder: it trains from its published "
            "weights, not from random ones; set model.pretrained to hf-cache (its file in the "
            "local Hugging Face cache) or to the path of its weights file"
        )
    weights = None
    if pretrained is not None:
        weights = find_weights(foundation, None if pretrained is True else Path(pretrained))
        logger.info("%s: initialising from %s", spec.name, weights)
    body = create_body(foundation, weights)
    return TokenEncoder(spec, body, int(body.num_features), int(body.patch_embed.feat_ratio()))


def _check_vit_options(spec: EncoderSpec) -> None:
    if spec.output_stride is not None or spec.stride8_no_dilation:
        raise ModelError(
            f"{spec.name} is a vision transformer: output_stride and stride8_no_dilation apply "
            "to CNNs only; its feature grid is set by the patch size"
        )


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    known = [*timm.list_models(), *FOUNDATION_ENCODERS]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ModelError(f"unknown encoder {name!r}{hint}")


def _create(name: str, hint: str = "", **kwargs: Any) -> Any:
    """timm.create_model with every failure turned into a ModelError that says what to do."""
    try:
        model = timm.create_model(name, **kwargs)
    except Exception as exc:  # downloads and constructors raise many types; all mean "cannot"
        raise ModelError(f"{name}: {type(exc).__name__}: {exc}{hint}") from exc
    return model


def _pretrained_kwargs(
    name: str, pretrained: bool | str | Path, probe: nn.Module
) -> dict[str, Any]:
    if pretrained is False:
        return {"pretrained": False}
    if pretrained is True:
        return {"pretrained": True}
    if isinstance(pretrained, str) and pretrained in WEIGHT_SOURCES:
        path = source_file(name, pretrained)
        state_dict = remap_to_timm(_read_weights(path), probe.state_dict(), str(path))
    else:
        path = Path(pretrained)
        state_dict = _read_weights(path)
    _check_weights(name, path, state_dict, probe)
    logger.info("%s: initialising from local weights %s", name, path)
    # timm then applies its own per-model fixes (e.g. position embeddings) while loading.
    return {
        "pretrained": True,
        "pretrained_cfg_overlay": {"state_dict": state_dict, "source": None},
    }


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found; give an existing .pth or .safetensors")
    try:
        state_dict = timm.models.load_state_dict(str(path), use_ema=False)
    except Exception as exc:  # torch.load / safetensors raise many types for a bad file
        raise ModelError(
            f"{path}: cannot read it as a weights file ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise ModelError(f"{path}: not a state dict of tensors")
    return state_dict


def _check_weights(name: str, path: Path, state_dict: dict[str, torch.Tensor], probe: Any) -> None:
    """Strict on the encoder: every backbone tensor present with its shape, nothing foreign."""
    classifier = probe.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)

    def is_head(key: str) -> bool:
        return any(key.startswith(head + ".") for head in heads)

    expected = {k: v.shape for k, v in probe.state_dict().items() if not is_head(k)}
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected and not is_head(k))
    wrong = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and state_dict[k].shape != shape
    )
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:_MAX_KEYS_SHOWN])}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if keys
    ]
    if problems:
        raise ModelError(
            f"{path}: weights do not fit encoder {name}: "
            + "; ".join(problems)
            + " (expects timm's key names for this architecture)"
        )


def _remove_late_strides(name: str, body: Any) -> int:
    """Set layer3/layer4 to stride 1 without dilation; return the removed stride factor."""
    factor = 1
    for stage_name in ("layer3", "layer4"):
        stage = getattr(body, stage_name, None)
        if not isinstance(stage, nn.Module):
            raise ModelError(
                f"{name}: stride8_no_dilation needs a ResNet-style encoder with layer3 and "
                "layer4; use output_stride=8 for other CNNs"
            )
        factor *= _unstride(name, stage_name, stage)
    return factor


def _unstride(name: str, stage_name: str, stage: nn.Module) -> int:
    removed = 1
    for module_name, module in list(stage.named_modules()):
        stride = getattr(module, "stride", 1)
        strides = stride if isinstance(stride, tuple) else (stride, stride)
        if all(s == 1 for s in strides):
            continue
        if next(module.children(), None) is not None:
            module.stride = 1  # a block's record of its stride; the leaves below do the work
            continue
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
        elif isinstance(module, nn.AvgPool2d):
            # avg-down shortcut: the pooling only downsamples, so it goes entirely
            parent_name, _, child = module_name.rpartition(".")
            setattr(stage.get_submodule(parent_name), child, nn.Identity())
        else:
            raise ModelError(
                f"{name}: cannot remove the stride of {stage_name}.{module_name} "
                f"({type(module).__name__}); use output_stride=8 instead"
            )
        removed = max(removed, int(strides[0]))
    return removed


def _locate_last_stage(name: str, body: Any) -> str:
    """Name of the last feature stage in ``body``.

    Feature wrappers may flatten the name timm reports ("stages.3" -> "stages_3"); a stage
    without parameters (an identity "final_conv") gives way to the last top-level module
    that has some.
    """
    module_name = str(body.feature_info.module_name()[-1])
    for candidate in (module_name, module_name.replace(".", "_", 1), module_name.replace(".", "_")):
        try:
            stage = body.get_submodule(candidate)
        except AttributeError:
            continue
        if next(stage.parameters(), None) is not None:
            return candidate
        break
    with_params = [
        n for n, child in body.named_children() if next(child.parameters(), None) is not None
    ]
    if not with_params:
        raise ModelError(f"{name}: cannot locate its last stage {module_name!r}")
    return with_params[-1]
