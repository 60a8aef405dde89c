"""Evaluate a checkpoint on patch stores: accuracy, and PxAP/Dice/IoU where masks exist.

Every store counts for top-1 accuracy. Stores with a ``masks`` array (stored at tile time
from the slide's annotations, or rasterised here from given QuPath annotations, which replace
any stored masks) also count for localisation, reported for the PixelCAM
map and for the image head's CAM side by side, at the fixed tau (0.5) and at the tau chosen
on validation: on ``val_store_paths`` when given, else the one the checkpoint recorded on its
own validation split. Never chosen on the evaluated stores themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wsi_pixelcam.config import EvalConfig, EvalRunConfig
from wsi_pixelcam.data.masks import add_masks_from_annotations
from wsi_pixelcam.data.patch_dataset import (
    PatchDataset,
    StoreInfo,
    check_tiling,
    global_class_names,
    read_store_info,
)
from wsi_pixelcam.data.transforms import EvalTransform
from wsi_pixelcam.errors import DataError, OutputError
from wsi_pixelcam.metrics import LocalizationAccumulator, LocalizationScores
from wsi_pixelcam.model.checkpoint import CheckpointMeta, load_checkpoint
from wsi_pixelcam.model.device import resolve_device
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.progress import TaskProgress
from wsi_pixelcam.training.loop import (
    EvalAccumulators,
    evaluate_batches,
    make_loader,
)


@dataclass(frozen=True)
class MapEvaluation:
    """One map's localisation: PxAP and scores at the fixed and the validation tau (%)."""

    pxap: float
    at_fixed_tau: LocalizationScores
    val_tau: float | None
    val_tau_source: str  # "validation stores", "checkpoint" or "none"
    at_val_tau: LocalizationScores | None


@dataclass(frozen=True)
class EvaluationResult:
    """Evaluation of one checkpoint on a set of stores.

    ``pixelcam`` is None for a teacher checkpoint (its pixel head is untrained); both maps
    are None when no store has masks.
    """

    checkpoint: str
    stage: str
    class_names: tuple[str, ...]
    stores: tuple[str, ...]
    stores_without_masks: tuple[str, ...]
    n_patches: int
    n_localised: int
    accuracy: float
    cam_method: str
    pixelcam: MapEvaluation | None
    cam: MapEvaluation | None

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return plain

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise OutputError(f"{path}: cannot write the evaluation ({exc})") from exc
        return path


def evaluate(
    checkpoint: str | Path,
    store_paths: Sequence[str | Path],
    cfg: EvalRunConfig | None = None,
    *,
    val_store_paths: Sequence[str | Path] | None = None,
    annotations: Mapping[str | Path, str | Path] | None = None,
    progress: TaskProgress | None = None,
) -> EvaluationResult:
    """Evaluate ``checkpoint`` on ``store_paths`` (see the module docstring).

    ``annotations`` maps a store path to its slide's QuPath GeoJSON; the store's ``masks``
    are rasterised from it first (replacing stored ones). Raises DataError for stores that do
    not fit the checkpoint (tiling, classes) and CheckpointError for a bad checkpoint.
    """
    cfg = cfg or EvalRunConfig()
    if not store_paths:
        raise DataError("no patch stores to evaluate")
    torch_device = resolve_device(cfg.device)
    model, meta = load_checkpoint(checkpoint, map_location=torch_device)
    for store, geojson in (annotations or {}).items():
        add_masks_from_annotations(store, geojson)
    infos = _checked(meta, store_paths)
    run = _Runner(model, meta, cfg, torch_device)
    with_masks = [i for i in infos if i.has_masks]
    without = [i for i in infos if not i.has_masks]
    accs = [run(with_masks, True, progress)] if with_masks else []
    if without:
        accs.append(run(without, False, progress))
    correct = sum(a.accuracy.correct for a in accs)
    total = sum(a.accuracy.total for a in accs)
    if total == 0:
        raise DataError("no labelled patch in the evaluated stores")
    val_taus = _val_taus(run, meta, val_store_paths, progress)
    located = accs[0] if with_masks else None
    pixel = cam = None
    if located is not None and located.pixel is not None and located.cam is not None:
        if meta.stage == "pixelcam":
            pixel = _map_eval(located.pixel, cfg.metrics, *val_taus["pixel"])
        cam = _map_eval(located.cam, cfg.metrics, *val_taus["cam"])
    return EvaluationResult(
        checkpoint=str(checkpoint),
        stage=meta.stage,
        class_names=meta.class_names,
        stores=tuple(str(i.path) for i in infos),
        stores_without_masks=tuple(str(i.path) for i in without),
        n_patches=total,
        n_localised=located.accuracy.total if located is not None else 0,
        accuracy=100.0 * correct / total,
        cam_method=cfg.cam_method,
        pixelcam=pixel,
        cam=cam,
    )


def _checked(meta: CheckpointMeta, store_paths: Sequence[str | Path]) -> list[StoreInfo]:
    """Store infos, refused unless tiled as the checkpoint was trained and of its classes."""
    infos = [read_store_info(p) for p in store_paths]
    check_tiling(infos, mpp=meta.mpp, patch_px=meta.patch_px, reference="the model")
    global_class_names(infos, meta.class_names)
    return infos


@dataclass(frozen=True)
class _Runner:
    model: PixelCAM
    meta: CheckpointMeta
    cfg: EvalRunConfig
    device: Any

    def __call__(
        self, infos: list[StoreInfo], with_masks: bool, progress: TaskProgress | None
    ) -> EvalAccumulators:
        dataset = PatchDataset(
            infos,
            self.meta.class_names,
            EvalTransform(self.meta.input_px, self.meta.mean, self.meta.std),
            with_mask=with_masks,
        )
        loader = make_loader(
            dataset,
            batch_size=self.cfg.batch_size,
            shuffle=False,
            num_workers=self.cfg.num_workers,
            seed=0,
            device=self.device,
        )
        report = progress("eval") if progress is not None else None
        return evaluate_batches(
            self.model,
            loader,
            device=self.device,
            amp=self.cfg.amp,
            cam_method=self.cfg.cam_method,
            eval_px=self.cfg.metrics.eval_px,
            with_masks=with_masks,
            report=report,
        )


def _val_taus(
    run: _Runner,
    meta: CheckpointMeta,
    val_store_paths: Sequence[str | Path] | None,
    progress: TaskProgress | None,
) -> dict[str, tuple[float | None, str]]:
    """The validation-chosen tau of each map, and where it came from."""
    if val_store_paths:
        infos = _checked(meta, val_store_paths)
        lacking = [str(i.path) for i in infos if not i.has_masks]
        if lacking:
            raise DataError(
                f"validation stores without masks ({lacking[0]}, ...): a tau can only be "
                "chosen on stores with pixel masks"
            )
        accs = run(infos, True, progress)
        assert accs.pixel is not None and accs.cam is not None
        return {
            "pixel": (accs.pixel.best_tau(run.cfg.metrics.tau_metric), "validation stores"),
            "cam": (accs.cam.best_tau(run.cfg.metrics.tau_metric), "validation stores"),
        }
    taus: dict[str, tuple[float | None, str]] = {}
    for name in ("pixel", "cam"):
        value = meta.val_metrics.get(f"best_tau_{name}")
        taus[name] = (None, "none") if value is None else (float(value), "checkpoint")
    return taus


def _map_eval(
    acc: LocalizationAccumulator, cfg: EvalConfig, val_tau: float | None, source: str
) -> MapEvaluation:
    return MapEvaluation(
        pxap=acc.pxap(),
        at_fixed_tau=acc.scores_at(cfg.tau),
        val_tau=val_tau,
        val_tau_source=source,
        at_val_tau=None if val_tau is None else acc.scores_at(val_tau),
    )
