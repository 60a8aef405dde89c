"""A training stage's epochs: resume, train, validate, keep the best and last checkpoints.

Files in the stage's directory: ``last.pt``, ``best_cls.pt`` (best validation accuracy),
``best_loc.pt`` (best validation PxAP, where the validation stores have masks) and
``state.pt`` (what a resumed run starts from, see :mod:`wsi_pixelcam.training.run_files`);
one JSON line per epoch goes to the run's ``metrics.jsonl``.

Under torchrun every rank runs these epochs on its share of each global batch (see
:mod:`wsi_pixelcam.training.distributed`); every rank validates its share of the validation
patches and sees the merged metrics; rank 0 alone writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from wsi_pixelcam.config import TrainConfig
from wsi_pixelcam.data.patch_dataset import PatchDataset
from wsi_pixelcam.errors import OutputError
from wsi_pixelcam.model.amp import uses_amp
from wsi_pixelcam.model.checkpoint import CheckpointMeta, save_checkpoint
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.progress import ProgressFn, TaskProgress
from wsi_pixelcam.training.distributed import DistContext, EpochSampler, class_balance_weights
from wsi_pixelcam.training.loop import (
    EvalAccumulators,
    Seeder,
    epoch_seed,
    evaluate_batches,
    make_loader,
    make_optimizer,
    set_epoch_lr,
    train_epoch,
)
from wsi_pixelcam.training.run_files import (
    Best,
    Resumable,
    append_row,
    load_state,
    read_rows,
    save_state,
    truncate_rows,
)

logger = logging.getLogger(__name__)

StageName = Literal["teacher", "pixelcam"]


@dataclass(frozen=True)
class StageRun:
    """One trained stage of a run: which one, the run's config, where the run writes, the
    metadata its checkpoints carry, the processes it runs on and (pixelcam) its seeder."""

    name: StageName
    cfg: TrainConfig
    run_dir: Path
    meta: CheckpointMeta
    context: DistContext
    seeder: Seeder | None = None

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def epochs(self) -> int:
        return self.cfg.teacher.epochs if self.name == "teacher" else self.cfg.pixelcam.epochs

    @property
    def trains_pixel_head(self) -> bool:
        return self.seeder is not None and self.cfg.pixelcam.lam > 0


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
    run: StageRun,
    model: PixelCAM,
    train_set: PatchDataset,
    val_set: Dataset[dict[str, torch.Tensor]] | None,
    *,
    val_has_masks: bool,
    progress: TaskProgress | None = None,
) -> StageResult:
    """Train ``model`` for the stage's epochs, resuming from ``state.pt`` when present."""
    parts = _prepare(run, model)
    bests: dict[str, Best | None] = {"cls": None, "loc": None}
    start = load_state(run.stage_dir, run.cfg.result_params(), parts, bests, run.context.device)
    if start:
        logger.info("%s: resuming after epoch %d of %d", run.name, start, run.epochs)
    if run.context.is_main:
        truncate_rows(run.metrics_path, run.name, start)
    trained = run.context.wrap(model)
    val_loader = _val_loader(run, val_set) if val_set is not None else None
    for epoch in range(start + 1, run.epochs + 1):
        row = _train_one_epoch(run, trained, parts, train_set, epoch, progress)
        run.context.broadcast_buffers(model)
        val_metrics = {"epoch": float(epoch)}
        if val_loader is not None:
            val_metrics.update(_validate(run, model, val_loader, val_has_masks, epoch, progress))
            row.update({f"val_{k}": v for k, v in val_metrics.items() if k != "epoch"})
        _keep_bests(run, model, epoch, val_metrics, bests)
        if run.context.is_main:
            _record_epoch(run, parts, epoch, row, val_metrics, bests)
    run.context.barrier()  # the next stage reads what rank 0 wrote
    return _result(run, start, bests)


def _prepare(run: StageRun, model: PixelCAM) -> Resumable:
    """The model on the rank's device, its optimiser and loss scaler."""
    run.stage_dir.mkdir(parents=True, exist_ok=True)
    device = run.context.device
    # nothing trains the pixel head of a teacher: frozen, DDP waits for no gradient of it
    model.pixel_head.requires_grad_(run.trains_pixel_head)
    model.to(device)
    optimizer = make_optimizer(model, run.cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=uses_amp(device, run.cfg.amp))
    if run.context.is_main and run.context.is_distributed:
        batch = run.cfg.optim.batch_size
        logger.info(
            "%s: global batch %d = %d processes x %d patches",
            run.name,
            batch,
            run.context.world_size,
            run.context.per_rank_batch(batch),
        )
    return Resumable(model, optimizer, scaler)


def _train_loader(
    run: StageRun, train_set: PatchDataset, seed: int
) -> DataLoader[dict[str, torch.Tensor]]:
    """This rank's batches of the epoch seeded ``seed`` (shuffled or class-balanced)."""
    context, batch = run.context, run.cfg.optim.batch_size
    sampler = EpochSampler(
        len(train_set),
        seed=seed,
        shuffle=True,
        weights=class_balance_weights(train_set.labels) if run.cfg.data.balance_classes else None,
        # whole global batches; a set smaller than one batch trains as one, split evenly
        whole=batch if len(train_set) > batch else context.world_size,
        rank=context.rank,
        world_size=context.world_size,
    )
    return make_loader(
        train_set,
        batch_size=context.per_rank_batch(batch),
        shuffle=False,
        num_workers=run.cfg.data.num_workers,
        seed=context.rank_seed(seed),
        device=context.device,
        sampler=sampler,
    )


def _val_loader(
    run: StageRun, val_set: Dataset[dict[str, torch.Tensor]]
) -> DataLoader[dict[str, torch.Tensor]]:
    """This rank's share of the validation patches, in order."""
    context = run.context
    sampler = EpochSampler(
        len(val_set),  # type: ignore[arg-type]
        seed=run.cfg.seed,
        shuffle=False,
        rank=context.rank,
        world_size=context.world_size,
    )
    return make_loader(
        val_set,
        batch_size=context.per_rank_batch(run.cfg.optim.batch_size),
        shuffle=False,
        num_workers=run.cfg.data.num_workers,
        seed=run.cfg.seed,
        device=context.device,
        sampler=sampler,
    )


def _train_one_epoch(
    run: StageRun,
    trained: torch.nn.Module,
    parts: Resumable,
    train_set: PatchDataset,
    epoch: int,
    progress: TaskProgress | None,
) -> dict[str, Any]:
    """One epoch at its learning rate; its metrics row (over all ranks)."""
    seed = epoch_seed(run.cfg.seed, run.name, epoch)
    torch.manual_seed(run.context.rank_seed(seed))
    lr = set_epoch_lr(parts.optimizer, run.cfg.optim, epoch)
    stats = train_epoch(
        trained,
        _train_loader(run, train_set, seed),
        parts.optimizer,
        parts.scaler,
        device=run.context.device,
        amp=run.cfg.amp,
        seeder=run.seeder,
        lam=run.cfg.pixelcam.lam,
        seed=seed,
        balanced_seeds=run.cfg.pixelcam.seeds.balance,
        report=_reporter(progress, run.name, epoch),
        context=run.context,
    )
    return {
        "stage": run.name,
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


def _validate(
    run: StageRun,
    model: PixelCAM,
    val_loader: DataLoader[dict[str, torch.Tensor]],
    val_has_masks: bool,
    epoch: int,
    progress: TaskProgress | None,
) -> dict[str, float]:
    """Accuracy, both maps' PxAP, and the validation-chosen tau of the stage's own map."""
    shard = evaluate_batches(
        model,
        val_loader,
        device=run.context.device,
        amp=run.cfg.amp,
        cam_method=run.cfg.teacher.cam_method,
        eval_px=run.cfg.eval.eval_px,
        with_masks=val_has_masks,
        report=_reporter(progress, f"{run.name}-val", epoch),
    )
    accs = EvalAccumulators.combined(run.context.gather(shard))
    metrics = {"accuracy": accs.accuracy.accuracy()}
    if accs.pixel is not None and accs.cam is not None:
        tau_metric = run.cfg.eval.tau_metric
        metrics["pxap_cam"] = accs.cam.pxap()
        metrics["pxap_pixel"] = accs.pixel.pxap()
        metrics["best_tau_cam"] = accs.cam.best_tau(tau_metric)
        metrics["best_tau_pixel"] = accs.pixel.best_tau(tau_metric)
        # the stage's own map: what inference thresholds by default
        metrics["best_tau"] = metrics[f"best_tau_{'pixel' if run.name == 'pixelcam' else 'cam'}"]
    return metrics


def _keep_bests(
    run: StageRun,
    model: PixelCAM,
    epoch: int,
    val_metrics: dict[str, float],
    bests: dict[str, Best | None],
) -> None:
    """Track best_cls (accuracy; the last epoch without validation) and best_loc (PxAP);
    rank 0 saves them (every rank sees the same metrics, so all track the same bests)."""
    loc_key = "pxap_pixel" if run.name == "pixelcam" else "pxap_cam"
    meta = replace(run.meta, val_metrics=val_metrics)
    # without validation "best" cannot be judged: best_cls follows the last epoch
    scores = {"cls": val_metrics.get("accuracy", float(epoch))}
    if loc_key in val_metrics:
        scores["loc"] = val_metrics[loc_key]
    for kind, score in scores.items():
        current = bests[kind]
        if current is None or score > current.score:
            path = run.stage_dir / f"best_{kind}.pt"
            if run.context.is_main:
                save_checkpoint(path, model, meta)
            bests[kind] = Best(path, epoch, score)


def _record_epoch(
    run: StageRun,
    parts: Resumable,
    epoch: int,
    row: dict[str, Any],
    val_metrics: dict[str, float],
    bests: dict[str, Best | None],
) -> None:
    """last.pt, the metrics row, then the state (in that order: see run_files)."""
    save_checkpoint(
        run.stage_dir / "last.pt", parts.model, replace(run.meta, val_metrics=val_metrics)
    )
    append_row(run.metrics_path, row)
    save_state(run.stage_dir, run.cfg.result_params(), parts, epoch, bests)


def _result(run: StageRun, start: int, bests: dict[str, Best | None]) -> StageResult:
    best_cls = bests["cls"]
    if best_cls is None:  # every epoch records one; a state without it is damaged
        raise OutputError(f"{run.stage_dir}: state.pt lists no best checkpoint; delete it")
    return StageResult(
        run.name,
        max(run.epochs, start),
        start,
        run.stage_dir / "last.pt",
        best_cls,
        bests["loc"],
        tuple(read_rows(run.metrics_path, run.name)),
    )


def _reporter(progress: TaskProgress | None, stage: str, epoch: int) -> ProgressFn | None:
    return None if progress is None else progress(f"{stage} epoch {epoch}")
