"""One-file checkpoints: weights plus everything needed to rebuild and use them.

The file is ``torch.save`` of a plain dict (tensors, strings, numbers, lists, dicts only, so
it loads with ``weights_only=True``): the format version, the package version, the model spec
(encoder name and feature-map settings, classes, dropout), the :class:`CheckpointMeta` and the
state dict. It is written under a temporary name and renamed, so a crash never leaves a
half-written checkpoint under the real name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from wsi_pixelcam import __version__
from wsi_pixelcam.atomic_write import replaced_when_done
from wsi_pixelcam.errors import CheckpointError, ModelError, OutputError
from wsi_pixelcam.model.encoders import EncoderSpec
from wsi_pixelcam.model.pixelcam import PixelCAM, PixelCAMSpec, build_pixelcam

FORMAT_VERSION = 1
_MAX_KEYS_SHOWN = 5


@dataclass(frozen=True)
class CheckpointMeta:
    """How a model was trained and must be fed.

    ``input_px``: side of the square network input; ``mpp`` and ``patch_px``: resolution and
    size of the stored patches it was trained on; ``stage``: "teacher" (image head only
    trained) or "pixelcam". ``package_version`` is the wsi-pixelcam version that saved it.
    """

    class_names: tuple[str, ...]
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mpp: float
    patch_px: int
    stage: Literal["teacher", "pixelcam"] = "pixelcam"
    train_config: dict[str, Any] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    package_version: str = __version__


def save_checkpoint(path: str | Path, model: PixelCAM, meta: CheckpointMeta) -> Path:
    """Write ``model`` and ``meta`` to ``path`` atomically; returns the path."""
    path = Path(path)
    if len(meta.class_names) != model.num_classes:
        raise CheckpointError(
            f"{path}: {len(meta.class_names)} class names for a {model.num_classes}-class model"
        )
    payload = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model_spec": asdict(model.spec),
        "meta": _plain({**asdict(meta), "package_version": __version__}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot write a checkpoint there ({exc.strerror or exc})"
        ) from exc
    try:
        with replaced_when_done(path, durable=True) as tmp, open(tmp, "wb") as stream:
            torch.save(payload, stream)
    except OSError as exc:
        raise OutputError(f"{path}: writing the checkpoint failed ({exc})") from exc
    return path


def load_checkpoint(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    expect_class_names: tuple[str, ...] | list[str] | None = None,
    expect_encoder: str | None = None,
) -> tuple[PixelCAM, CheckpointMeta]:
    """Rebuild the model saved at ``path`` (in eval mode) and return it with its metadata.

    ``expect_*`` check the checkpoint against the caller's setup. Raises CheckpointError for a
    missing or foreign file, another format version, or weights that do not fit.
    """
    path = Path(path)
    spec, meta, state_dict = _parse(path, _read(path, map_location))
    if expect_encoder is not None and spec.encoder.name != expect_encoder:
        raise CheckpointError(
            f"{path}: trained with encoder {spec.encoder.name!r}, not {expect_encoder!r}"
        )
    if expect_class_names is not None and tuple(expect_class_names) != meta.class_names:
        raise CheckpointError(
            f"{path}: trained for classes {list(meta.class_names)}, not {list(expect_class_names)}"
        )
    try:
        # the bare architecture: every weight comes from this file, a foundation encoder's
        # too, so no weights file of its own is needed
        model = build_pixelcam(spec, pretrained=None)
    except ModelError as exc:
        raise CheckpointError(f"{path}: cannot rebuild its model ({exc})") from exc
    _load_state(path, model, state_dict)
    return model.to(map_location).eval(), meta


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """The metadata of the checkpoint at ``path``, without building its model.

    A cheap check that a file is a usable checkpoint, made once before a batch starts rather
    than in every worker. Raises CheckpointError as :func:`load_checkpoint` does.
    """
    path = Path(path)
    return _parse(path, _read(path, "cpu"))[1]


def _parse(
    path: Path, payload: dict[str, Any]
) -> tuple[PixelCAMSpec, CheckpointMeta, dict[str, torch.Tensor]]:
    """The model spec, metadata and state dict of a read payload; CheckpointError if damaged."""
    try:
        spec_dict = payload["model_spec"]
        spec = PixelCAMSpec(
            encoder=EncoderSpec(**spec_dict["encoder"]),
            num_classes=int(spec_dict["num_classes"]),
            dropout=float(spec_dict["dropout"]),
        )
        raw = dict(payload["meta"])
        meta = CheckpointMeta(
            **{
                **raw,
                "class_names": tuple(raw["class_names"]),
                "mean": tuple(raw["mean"]),
                "std": tuple(raw["std"]),
            }
        )
        state_dict = payload["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is damaged ({exc!r})") from exc
    return spec, meta, state_dict


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not ours"
        raise CheckpointError(
            f"{path}: not a wsi-pixelcam checkpoint ({type(exc).__name__})"
        ) from exc
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path}: not a wsi-pixelcam checkpoint (no format_version)")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']} (written by wsi-pixelcam "
            f"{payload.get('package_version', '?')}), this version reads format "
            f"{FORMAT_VERSION}; load it with the version that wrote it or retrain"
        )
    return payload


def _load_state(path: Path, model: PixelCAM, state_dict: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    )
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:_MAX_KEYS_SHOWN])}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{path}: weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict)


def _plain(value: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy (paths and other objects become strings) so the file loads weights-only."""
    plain: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return plain
