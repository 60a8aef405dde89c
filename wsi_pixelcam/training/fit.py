"""Training from patch stores: teacher -> CAM dump -> PixelCAM (PIXELCAM.md, Pipeline).

``train`` checks the stores (labels, classes, tiling), splits them by slide, and runs the
stages asked for. Each stage can run on its own (``stage=``) and resumes where an earlier,
interrupted call stopped; a finished stage is not redone. Output directory::

    split.json      classes, slides on each side, class counts (fixed for the run)
    metrics.jsonl   one line per epoch and stage
    teacher/        last.pt best_cls.pt [best_loc.pt] state.pt
    pixelcam/       last.pt best_cls.pt [best_loc.pt] state.pt
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from wsi_pixelcam.config import TrainConfig
from wsi_pixelcam.data.patch_dataset import (
    PatchDataset,
    StoreInfo,
    check_tiling,
    class_counts,
    global_class_names,
    global_labels,
    read_store_info,
    split_by_slide,
)
from wsi_pixelcam.data.transforms import EvalTransform, TrainTransform
from wsi_pixelcam.errors import CheckpointError, ConfigError, DataError
from wsi_pixelcam.model.checkpoint import CheckpointMeta, load_checkpoint
from wsi_pixelcam.model.device import resolve_device
from wsi_pixelcam.model.encoders import EncoderSpec, encoder_normalization
from wsi_pixelcam.model.pixelcam import PixelCAM, PixelCAMSpec, build_pixelcam
from wsi_pixelcam.progress import TaskProgress
from wsi_pixelcam.training.cam_dump import CamDumpResult, cams_up_to_date, dump_cams, file_sha256
from wsi_pixelcam.training.distributed import DistContext, single_process
from wsi_pixelcam.training.loop import (
    Seeder,
    SharedGeometry,
    epoch_seed,
    seed_everything,
)
from wsi_pixelcam.training.split_file import DataSummary, fix_split
from wsi_pixelcam.training.stage import StageResult, StageRun, run_stage

logger = logging.getLogger(__name__)

Stage = Literal["teacher", "cams", "pixelcam"]
STAGES: tuple[Stage, ...] = ("teacher", "cams", "pixelcam")


@dataclass(frozen=True)
class TrainResult:
    """What a ``train`` call did; ``model_path`` is the PixelCAM checkpoint to infer with.

    ``model_path`` is the pixelcam stage's best_loc where validation has masks, else its
    best_cls; None if that stage has not run.
    """

    out_dir: Path
    device: str
    stages: tuple[Stage, ...]
    data: DataSummary
    teacher: StageResult | None
    cams: tuple[CamDumpResult, ...]
    pixelcam: StageResult | None
    model_path: Path | None


@dataclass(frozen=True)
class _Data:
    summary: DataSummary
    train: list[StoreInfo]
    val: list[StoreInfo]


def train(
    cfg: TrainConfig,
    store_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    stage: Stage | None = None,
    val_store_paths: Sequence[str | Path] | None = None,
    progress: TaskProgress | None = None,
    context: DistContext | None = None,
) -> TrainResult:
    """Run all stages (``stage=None``) or one of them on ``store_paths``.

    Validation stores come from ``val_store_paths`` if given, else a slide-level split of
    ``store_paths`` (``cfg.data.val_fraction``). ``context`` is this process's rank in a
    torchrun run (:func:`~wsi_pixelcam.training.distributed.process_group`); None trains in
    this process alone on ``cfg.device``. Raises DataError for unusable stores, ModelError for
    an unknown encoder, unfit weights or an absent GPU, CheckpointError when a stage's input
    (teacher checkpoint) is missing, ConfigError for a batch the ranks cannot share.
    """
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"stage={stage!r}: choose one of {', '.join(STAGES)}")
    context = context or single_process(resolve_device(cfg.device))
    context.per_rank_batch(cfg.optim.batch_size)  # refused before any work
    progress = progress if context.is_main else None
    out = Path(out_dir)
    data = _prepare_data(cfg, store_paths, val_store_paths)
    wanted = STAGES if stage is None else (stage,)
    seed_everything(cfg.seed)
    # built before anything is written: an unknown encoder or unfit weights leave no trace
    teacher_model = _teacher_model(cfg, data) if "teacher" in wanted else None
    out.mkdir(parents=True, exist_ok=True)
    if context.is_main:
        fix_split(out / "split.json", data.summary)
        _log_balance(data.summary)
    context.barrier()
    teacher = cams = pixelcam = None
    if teacher_model is not None:
        teacher = _run_teacher(cfg, data, teacher_model, out, context, progress)
    if "cams" in wanted:
        cams = _dump_cams(cfg, data, out, context, progress)
    if "pixelcam" in wanted:
        pixelcam = _run_pixelcam(cfg, data, out, context, progress)
    model_path = None
    if pixelcam is not None:
        chosen = pixelcam.best_loc if pixelcam.best_loc is not None else pixelcam.best_cls
        model_path = chosen.path
    return TrainResult(
        out, str(context.device), wanted, data.summary, teacher, cams or (), pixelcam, model_path
    )


def _prepare_data(
    cfg: TrainConfig,
    store_paths: Sequence[str | Path],
    val_store_paths: Sequence[str | Path] | None,
) -> _Data:
    if not store_paths:
        raise DataError("no patch stores given; pass the .zarr stores written by `tile`")
    infos = [read_store_info(p) for p in store_paths]
    val_given = [read_store_info(p) for p in val_store_paths or ()]
    mpp, patch_px = check_tiling(
        infos + val_given,
        mpp=cfg.data.mpp,
        patch_px=cfg.data.patch_px,
        tolerance=cfg.data.mpp_tolerance,
    )
    classes = global_class_names(infos + val_given, cfg.data.classes)
    if len(classes) < 2:
        raise DataError(
            f"only one class ({classes[0]!r}) is labelled in the stores; a classifier needs "
            "patches of at least two classes"
        )
    labels = [global_labels(i, classes) for i in infos]
    if val_store_paths:
        shared = {i.slide_id for i in infos} & {i.slide_id for i in val_given}
        if shared:
            raise DataError(
                f"slides {sorted(shared)} are in both the training and the validation stores; "
                "a slide's patches must be on one side only"
            )
        train_infos, val_infos = infos, val_given
    else:
        split = split_by_slide(
            [i.slide_id for i in infos], labels, len(classes), cfg.data.val_fraction, cfg.seed
        )
        train_infos = [infos[i] for i in split.train]
        val_infos = [infos[i] for i in split.val]

    def counts(side: list[StoreInfo]) -> tuple[int, ...]:
        per_store = [class_counts(global_labels(i, classes), len(classes)) for i in side]
        return tuple(int(sum(c[k] for c in per_store)) for k in range(len(classes)))

    train_counts = counts(train_infos)
    _check_every_class_trains(classes, train_counts, counts(val_infos), bool(val_store_paths))
    summary = DataSummary(
        class_names=classes,
        mpp=mpp,
        patch_px=patch_px,
        train_stores=tuple(str(i.path) for i in train_infos),
        val_stores=tuple(str(i.path) for i in val_infos),
        train_slides=tuple(sorted({i.slide_id for i in train_infos})),
        val_slides=tuple(sorted({i.slide_id for i in val_infos})),
        train_counts=train_counts,
        val_counts=counts(val_infos),
        val_has_masks=bool(val_infos) and all(i.has_masks for i in val_infos),
    )
    return _Data(summary, train_infos, val_infos)


def _check_every_class_trains(
    classes: tuple[str, ...],
    train_counts: tuple[int, ...],
    val_counts: tuple[int, ...],
    val_given: bool,
) -> None:
    """DataError naming a class no training patch has, and why."""
    for name, n_train, n_val in zip(classes, train_counts, val_counts, strict=True):
        if n_train:
            continue
        if not n_val:
            raise DataError(
                f"class {name!r} (data.classes) is labelled in none of the stores; remove it "
                "from data.classes or add slides annotated with it"
            )
        where = "validation stores" if val_given else "slides the split sent to validation"
        raise DataError(
            f"class {name!r} is labelled only in the {where} ({n_val} patches): a class "
            "must be trained on; add training slides with it"
            + ("" if val_given else " or lower data.val_fraction")
        )


def _log_balance(summary: DataSummary) -> None:
    for side, slides, counts in (
        ("train", summary.train_slides, summary.train_counts),
        ("val", summary.val_slides, summary.val_counts),
    ):
        balance = ", ".join(f"{c}: {n}" for c, n in zip(summary.class_names, counts, strict=True))
        logger.info("%s: %d slides, %d patches (%s)", side, len(slides), sum(counts), balance)


def _meta(cfg: TrainConfig, data: _Data, stage: Literal["teacher", "pixelcam"]) -> CheckpointMeta:
    mean, std = cfg.input.normalization(encoder_normalization(cfg.model.encoder))
    return CheckpointMeta(
        class_names=data.summary.class_names,
        input_px=cfg.input.input_px,
        mean=mean,
        std=std,
        mpp=math.nan if data.summary.mpp is None else data.summary.mpp,
        patch_px=data.summary.patch_px,
        stage=stage,
        train_config=cfg.model_dump(mode="json"),
    )


def _datasets(
    cfg: TrainConfig, data: _Data, feature_hw: tuple[int, int], with_cam: bool
) -> tuple[PatchDataset, PatchDataset | None]:
    geometry = SharedGeometry(cfg.input.resize_px, cfg.input.input_px, cfg.input.flips, feature_hw)
    jitter = (cfg.input.brightness, cfg.input.contrast, cfg.input.saturation, cfg.input.hue)
    classes = data.summary.class_names
    mean, std = cfg.input.normalization(encoder_normalization(cfg.model.encoder))
    train_set = PatchDataset(
        data.train,
        classes,
        TrainTransform(geometry, jitter, mean, std, cfg.input.hed_jitter),
        with_cam=with_cam,
    )
    val_set = None
    if data.val:
        val_set = PatchDataset(
            data.val,
            classes,
            EvalTransform(cfg.input.input_px, mean, std),
            with_mask=data.summary.val_has_masks,
        )
    return train_set, val_set


def _teacher_model(cfg: TrainConfig, data: _Data) -> PixelCAM:
    torch.manual_seed(epoch_seed(cfg.seed, "teacher", 0))
    spec = PixelCAMSpec(
        EncoderSpec(cfg.model.encoder, cfg.model.output_stride, cfg.model.stride8_no_dilation),
        num_classes=len(data.summary.class_names),
        dropout=cfg.model.dropout,
    )
    return build_pixelcam(spec, pretrained=cfg.model.pretrained_weights())


def _run_teacher(
    cfg: TrainConfig,
    data: _Data,
    model: PixelCAM,
    out: Path,
    context: DistContext,
    progress: TaskProgress | None,
) -> StageResult:
    train_set, val_set = _datasets(cfg, data, (1, 1), with_cam=False)
    run = StageRun("teacher", cfg, out, _meta(cfg, data, "teacher"), context)
    return run_stage(
        run, model, train_set, val_set, val_has_masks=data.summary.val_has_masks, progress=progress
    )


def _teacher_file(out: Path, kind: str) -> Path:
    path = out / "teacher" / f"{kind}.pt"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no teacher checkpoint; run the teacher stage first (--stage teacher)"
        )
    return path


def _cam_teacher(cfg: TrainConfig, out: Path) -> Path:
    """The teacher checkpoint whose CAMs are dumped (best_loc falls back to best_cls)."""
    kind = cfg.teacher.cam_checkpoint
    if kind == "best_loc" and not (out / "teacher" / "best_loc.pt").is_file():
        kind = "best_cls"
    return _teacher_file(out, kind)


def _dump_cams(
    cfg: TrainConfig,
    data: _Data,
    out: Path,
    context: DistContext,
    progress: TaskProgress | None,
) -> tuple[CamDumpResult, ...]:
    """The teacher's CAMs into every training store; under torchrun each rank dumps its own
    stores (balanced by patch count), so no two ranks ever write one store."""
    stores = [str(i.path) for i in data.train]
    mine = context.share_of([i.n_patches for i in data.train])
    written = dump_cams(
        _cam_teacher(cfg, out),
        [stores[i] for i in mine],
        method=cfg.teacher.cam_method,
        batch_size=context.per_rank_batch(cfg.optim.batch_size),
        num_workers=cfg.data.num_workers,
        device=context.device,
        amp=cfg.amp,
        progress=progress,
    )
    by_store = {str(r.store): r for share in context.gather(written) for r in share}
    return tuple(by_store[s] for s in stores)


def _run_pixelcam(
    cfg: TrainConfig, data: _Data, out: Path, context: DistContext, progress: TaskProgress | None
) -> StageResult:
    cam_teacher = _cam_teacher(cfg, out)
    teacher_sha = file_sha256(cam_teacher)
    stale = [
        str(i.path)
        for i in data.train
        if not cams_up_to_date(i.path, teacher_sha, cfg.teacher.cam_method)
    ]
    if stale:
        raise DataError(
            f"{len(stale)} store(s) lack up-to-date CAMs of {cam_teacher} (first: {stale[0]}); "
            "run the cams stage (--stage cams)"
        )
    init = _teacher_file(out, "best_cls")
    model, meta = load_checkpoint(init, expect_class_names=data.summary.class_names)
    if meta.stage != "teacher":
        raise CheckpointError(f"{init}: a {meta.stage} checkpoint, not a teacher")
    torch.manual_seed(epoch_seed(cfg.seed, "pixelcam", 0))
    model.pixel_head.reset_parameters()  # a fresh pixel head on the teacher's encoder and head
    with torch.no_grad():
        grid = model.encoder(torch.zeros(1, 3, cfg.input.input_px, cfg.input.input_px)).shape
    # re-read: the dump added the cams record to each store
    fresh = _Data(data.summary, [read_store_info(i.path) for i in data.train], data.val)
    train_set, val_set = _datasets(cfg, fresh, (int(grid[-2]), int(grid[-1])), with_cam=True)
    seeder = Seeder.from_config(cfg.pixelcam.seeds, data.summary.class_names)
    run = StageRun("pixelcam", cfg, out, _meta(cfg, data, "pixelcam"), context, seeder)
    return run_stage(
        run, model, train_set, val_set, val_has_masks=data.summary.val_has_masks, progress=progress
    )


def summary_dict(result: TrainResult) -> dict[str, Any]:
    """A JSON-safe view of a TrainResult (for the CLI to print or save)."""
    plain: dict[str, Any] = json.loads(json.dumps(asdict(result), default=str))
    return plain
