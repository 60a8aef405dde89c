"""A training stage's epochs: resume, per-epoch metrics log, best and last checkpoints.

Files in the stage's directory: ``last.pt``, ``best_cls.pt`` (best validation accuracy),
``best_loc.pt`` (best validation PxAP, where the validation stores have masks) and
``state.pt`` (weights, optimiser, scaler and bests after the last finished epoch: what a
resumed run starts from). Metrics go, one JSON line per epoch, to the run's
``metrics.jsonl``. Each epoch's line is written before its state, and a resumed run drops
lines past its state's epoch, so the log never holds an epoch twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from wsi_pixelcam.atomic_write import replaced_when_done
from wsi_pixelcam.config import OptimConfig
from wsi_pixelcam.data.patch_dataset import PatchDataset
from wsi_pixelcam.errors import ConfigError, OutputError
from wsi_pixelcam.model.amp import uses_amp
from wsi_pixelcam.model.cam import CamMethod
from wsi_pixelcam.model.checkpoint import CheckpointMeta, save_checkpoint
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.training.loop import (
    EvalAccumulators,
    ProgressFn,
    Seeder,
    epoch_seed,
    evaluate_batches,
    make_loader,
    make_optimizer,
    set_epoch_lr,
    train_epoch,
)

logger = logging.getLogger(__name__)

StageName = Literal["teacher", "pixelcam"]
STATE_FORMAT = 1


@dataclass(frozen=True)
class StagePlan:
    """Everything a stage's epochs need besides the model and data."""

    name: StageName
    stage_dir: Path
    metrics_path: Path
    epochs: int
    optim: OptimConfig
    seeder: Seeder | None
    lam: float
    balanced_seeds: bool
    balance_classes: bool
    cam_method: CamMethod
    eval_px: int
    tau_metric: Literal["miou", "dice_fg"]
    seed: int
    num_workers: int
    device: torch.device
    amp: bool
    meta: CheckpointMeta
    run_params: dict[str, Any]


@dataclass(frozen=True)
class Best:
    """A kept checkpoint: its file, the epoch it is from and its score."""

    path: Path
    epoch: int
    score: float


@dataclass(frozen=True)
class StageResult:
    """A finished stage: its checkpoints and its metrics rows (all epochs, resumed or not)."""

    stage: str
    epochs: int
    resumed_from: int
    last: Path
    best_cls: Best
    best_loc: Best | None
    history: tuple[dict[str, Any], ...]


def run_stage(
    plan: StagePlan,
    model: PixelCAM,
    train_set: PatchDataset,
    val_set: Dataset[dict[str, torch.Tensor]] | None,
    *,
    val_has_masks: bool,
    progress: ProgressFn | None = None,
) -> StageResult:
    """Train ``model`` for the plan's epochs, resuming from ``state.pt`` when present."""
    plan.stage_dir.mkdir(parents=True, exist_ok=True)
    model.to(plan.device)
    optimizer = make_optimizer(model, plan.optim)
    scaler = torch.amp.GradScaler(plan.device.type, enabled=uses_amp(plan.device, plan.amp))
    bests: dict[str, Best | None] = {"cls": None, "loc": None}
    start = _resume(plan, model, optimizer, scaler, bests)
    if start:
        logger.info("%s: resuming after epoch %d of %d", plan.name, start, plan.epochs)
    _truncate_log(plan.metrics_path, plan.name, start)
    val_loader = None
    if val_set is not None:
        val_loader = make_loader(
            val_set,
            batch_size=plan.optim.batch_size,
            shuffle=False,
            num_workers=plan.num_workers,
            seed=plan.seed,
            device=plan.device,
        )
    for epoch in range(start + 1, plan.epochs + 1):
        seed = epoch_seed(plan.seed, plan.name, epoch)
        torch.manual_seed(seed)
        lr = set_epoch_lr(optimizer, plan.optim, epoch)
        loader = make_loader(
            train_set,
            batch_size=plan.optim.batch_size,
            shuffle=True,
            num_workers=plan.num_workers,
            seed=seed,
            device=plan.device,
            drop_last=len(train_set) > plan.optim.batch_size,
            balance_labels=train_set.labels if plan.balance_classes else None,
        )
        stats = train_epoch(
            model,
            loader,
            optimizer,
            scaler,
            device=plan.device,
            amp=plan.amp,
            seeder=plan.seeder,
            lam=plan.lam,
            seed=seed,
            balanced_seeds=plan.balanced_seeds,
            report=_reporter(progress, plan.name, epoch),
        )
        row: dict[str, Any] = {
            "stage": plan.name,
            "epoch": epoch,
            "lr": lr,
            "loss": stats.loss,
            "image_loss": stats.image_loss,
            "pixel_loss": stats.pixel_loss,
            "train_accuracy": stats.accuracy,
            "seeds_fg": stats.seeds_fg,
            "seeds_bg": stats.seeds_bg,
            "patches_per_s": stats.patches_per_s,
            "train_seconds": stats.seconds,
        }
        val_metrics = {"epoch": float(epoch)}
        if val_loader is not None:
            accs = evaluate_batches(
                model,
                val_loader,
                device=plan.device,
                amp=plan.amp,
                cam_method=plan.cam_method,
                eval_px=plan.eval_px,
                with_masks=val_has_masks,
                report=_reporter(progress, f"{plan.name}-val", epoch),
            )
            val_metrics.update(_val_metrics(accs, plan))
            row.update({f"val_{k}": v for k, v in val_metrics.items() if k != "epoch"})
        _keep_bests(plan, model, epoch, val_metrics, bests)
        save_checkpoint(
            plan.stage_dir / "last.pt", model, replace(plan.meta, val_metrics=val_metrics)
        )
        _append_log(plan.metrics_path, row)
        _save_state(plan, model, optimizer, scaler, epoch, bests)
    best_cls = bests["cls"]
    if best_cls is None:  # every epoch records one; a state without it is damaged
        raise OutputError(f"{plan.stage_dir}: state.pt lists no best checkpoint; delete it")
    return StageResult(
        plan.name,
        max(plan.epochs, start),
        start,
        plan.stage_dir / "last.pt",
        best_cls,
        bests["loc"],
        tuple(_read_log(plan.metrics_path, plan.name)),
    )


def _reporter(
    progress: ProgressFn | None, stage: str, epoch: int
) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda step, total: progress(stage, epoch, step, total)


def _val_metrics(accs: EvalAccumulators, plan: StagePlan) -> dict[str, float]:
    """Accuracy, both maps' PxAP, and the validation-chosen tau of the stage's own map."""
    metrics = {"accuracy": accs.accuracy.accuracy()}
    if accs.pixel is not None and accs.cam is not None:
        metrics["pxap_cam"] = accs.cam.pxap()
        metrics["pxap_pixel"] = accs.pixel.pxap()
        metrics["best_tau_cam"] = accs.cam.best_tau(plan.tau_metric)
        metrics["best_tau_pixel"] = accs.pixel.best_tau(plan.tau_metric)
        # the stage's own map: what inference thresholds by default
        metrics["best_tau"] = metrics[f"best_tau_{'pixel' if plan.name == 'pixelcam' else 'cam'}"]
    return metrics


def _keep_bests(
    plan: StagePlan,
    model: PixelCAM,
    epoch: int,
    val_metrics: dict[str, float],
    bests: dict[str, Best | None],
) -> None:
    """Save best_cls (accuracy; the last epoch without validation) and best_loc (PxAP)."""
    loc_key = "pxap_pixel" if plan.name == "pixelcam" else "pxap_cam"
    meta = replace(plan.meta, val_metrics=val_metrics)
    # without validation "best" cannot be judged: best_cls follows the last epoch
    scores = {"cls": val_metrics.get("accuracy", float(epoch))}
    if loc_key in val_metrics:
        scores["loc"] = val_metrics[loc_key]
    for kind, score in scores.items():
        current = bests[kind]
        if current is None or score > current.score:
            path = save_checkpoint(plan.stage_dir / f"best_{kind}.pt", model, meta)
            bests[kind] = Best(path, epoch, score)


def _save_state(
    plan: StagePlan,
    model: PixelCAM,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    bests: dict[str, Best | None],
) -> None:
    payload = {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "run_params": json.loads(json.dumps(plan.run_params)),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "bests": {
            k: None if b is None else {"epoch": b.epoch, "score": b.score} for k, b in bests.items()
        },
    }
    path = plan.stage_dir / "state.pt"
    with replaced_when_done(path) as tmp:
        torch.save(payload, tmp)


def _resume(
    plan: StagePlan,
    model: PixelCAM,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    bests: dict[str, Best | None],
) -> int:
    """Load ``state.pt`` if there is one; return the last finished epoch (0 if none)."""
    path = plan.stage_dir / "state.pt"
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=plan.device, weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise OutputError(f"{path}: resume state of another format; use a fresh output dir")
    saved = state["run_params"]
    wanted = json.loads(json.dumps(plan.run_params))
    if saved != wanted:
        changed = sorted(_diff(saved, wanted))
        raise ConfigError(
            f"{plan.stage_dir}: holds a {plan.name} run made with other settings "
            f"({', '.join(changed[:5])}); use a fresh output directory or the same config"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    for kind, info in state["bests"].items():
        if info is not None:
            path_k = plan.stage_dir / f"best_{kind}.pt"
            bests[kind] = Best(path_k, int(info["epoch"]), float(info["score"]))
    return int(state["epoch"])


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        ]
    return [] if a == b else [prefix.rstrip(".")]


def _append_log(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as stream:
        stream.write(json.dumps(row) + "\n")


def _read_log(path: Path, stage: str) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("stage") == stage]


def _truncate_log(path: Path, stage: str, last_epoch: int) -> None:
    """Drop this stage's rows past ``last_epoch`` (left by an interrupted epoch)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [
        line
        for line in lines
        if line.strip()
        and not (
            json.loads(line).get("stage") == stage and json.loads(line).get("epoch", 0) > last_epoch
        )
    ]
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept))
