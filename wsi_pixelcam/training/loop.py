"""One epoch of training or validation, and what it runs with: device, seeding, optimiser,
the image/CAM geometry its loader applies and the seeds it draws.

Everything random in an epoch (shuffling, augmentation in the loader workers, seed draws)
is seeded from (run seed, stage, epoch), so an epoch resumed after an interruption repeats
exactly the epoch an uninterrupted run would have made.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from wsi_pixelcam.config import OptimConfig, SeedsConfig
from wsi_pixelcam.metrics import AccuracyAccumulator, LocalizationAccumulator
from wsi_pixelcam.model.amp import autocast
from wsi_pixelcam.model.cam import CamMethod, compute_cam, upsample_map
from wsi_pixelcam.model.losses import LossParts, pixelcam_loss
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.model.seeds import (
    IGNORE_INDEX,
    SeedConfig,
    augment_pair,
    draw_seeds,
    random_geometric_aug,
)
from wsi_pixelcam.progress import ProgressFn
from wsi_pixelcam.training.distributed import DistContext, global_position, single_process

logger = logging.getLogger(__name__)


_STAGE_SALT = {"teacher": 1, "pixelcam": 2, "cams": 3, "eval": 4}


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """The seed of one stage's epoch: distinct per stage and epoch, the same on resume."""
    return (seed * 1_000_003 + _STAGE_SALT[stage] * 10_007 + epoch) % 2**31


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(
    dataset: Dataset[dict[str, torch.Tensor]],
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    device: torch.device,
    drop_last: bool = False,
    sampler: Sampler[int] | None = None,
) -> DataLoader[dict[str, torch.Tensor]]:
    """A DataLoader whose shuffle order and per-worker RNG follow ``seed``.

    ``sampler`` (training's :class:`~wsi_pixelcam.training.distributed.EpochSampler`:
    shuffled or class-balanced, this rank's share) replaces ``shuffle``.
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def make_optimizer(model: PixelCAM, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD with the paper's groups: last encoder stage and heads at ``head_lr_mult`` x."""
    groups = model.param_groups(cfg.base_lr, cfg.head_lr_mult)
    for group in groups:
        group["lr_mult"] = group["lr"] / cfg.base_lr
    return torch.optim.SGD(
        groups,
        lr=cfg.base_lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def set_epoch_lr(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epoch: int) -> float:
    """Step decay once per epoch (``epoch`` counts from 1); returns the base LR set."""
    base = max(cfg.base_lr * cfg.lr_gamma ** ((epoch - 1) // cfg.lr_step), cfg.min_lr)
    for group in optimizer.param_groups:
        group["lr"] = base * group["lr_mult"]
    return base


@dataclass(frozen=True)
class EpochStats:
    """Mean losses and accuracy (%) over one training epoch, its throughput, and the pixel
    seeds it drew of each kind (how lopsided foreground against background was)."""

    loss: float
    image_loss: float
    pixel_loss: float
    accuracy: float
    n_patches: int
    seconds: float
    seeds_fg: int = 0
    seeds_bg: int = 0

    @property
    def patches_per_s(self) -> float:
        return self.n_patches / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class SharedGeometry:
    """Resize -> random crop -> flips on the image and its CAM alike (the CAM to the grid).

    Picklable, so it runs in the loader workers. Without a CAM only the image is changed.
    """

    resize_px: int
    crop_px: int
    flips: bool
    feature_hw: tuple[int, int]

    def __call__(
        self, image: torch.Tensor, cam: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        aug = random_geometric_aug(self.resize_px, self.crop_px, flips=self.flips)
        if cam is None:
            out_image, _ = augment_pair(image, image.new_zeros(1, 1), aug, (1, 1))
            return out_image, None
        return augment_pair(image, cam, aug, self.feature_hw)


@dataclass(frozen=True)
class Seeder:
    """Draws the pixel seeds of a batch from its (augmented) CAMs."""

    config: SeedConfig
    negative_ids: tuple[int, ...]

    @classmethod
    def from_config(cls, cfg: SeedsConfig, class_names: Sequence[str]) -> Seeder:
        seed_cfg = SeedConfig(cfg.method, cfg.n_fg, cfg.n_bg, cfg.min_p, cfg.erode_k)
        negative = tuple(i for i, n in enumerate(class_names) if n in cfg.negative_classes)
        return cls(seed_cfg, negative)

    def __call__(
        self, cams: torch.Tensor, labels: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """Seeds of each patch, drawn from its own generator (see :func:`sample_generator`)."""
        negative = torch.isin(labels, torch.tensor(self.negative_ids, dtype=labels.dtype))
        return torch.cat(
            [
                draw_seeds(cams[i : i + 1], negative[i : i + 1], self.config, generator)
                for i, generator in enumerate(generators)
            ]
        )


def sample_generator(seed: int, position: int) -> torch.Generator:
    """The generator of the seeds of the patch at ``position`` in an epoch's order.

    Drawn per position, not from one stream per batch, so a patch gets the same seeds
    whichever rank trains it and however the global batch is split.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + position) % 2**63)


def train_epoch(
    model: torch.nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    device: torch.device,
    amp: bool,
    seeder: Seeder | None,
    lam: float,
    seed: int,
    balanced_seeds: bool = False,
    report: ProgressFn | None = None,
    context: DistContext | None = None,
) -> EpochStats:
    """One pass over ``loader``; ``seeder`` None trains the image head only (the teacher).

    ``balanced_seeds`` weighs foreground and background seeds equally in the pixel loss.

    ``loader`` is a DataLoader, or any iterable of the batches one yields (a benchmark feeds
    batches held in memory). ``model`` is a PixelCAM, or one wrapped in
    DistributedDataParallel with ``context`` its rank: the stats are then over all ranks.
    """
    context = context or single_process(device)
    model.train()
    sums = np.zeros(3)
    seed_counts = np.zeros(2, dtype=np.int64)  # background, foreground: how lopsided they are
    accuracy = AccuracyAccumulator()
    started = time.perf_counter()
    total = len(loader) if isinstance(loader, Sized) else 0
    for step, batch in enumerate(loader, start=1):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        n = len(labels)
        seeds = None
        if seeder is not None:
            generators = [
                sample_generator(seed, global_position(step - 1, i, n, context)) for i in range(n)
            ]
            seeds = seeder(batch["cam"], batch["label"], generators)
            seed_counts += np.bincount(seeds[seeds >= 0].numpy(), minlength=2)[:2]
            seeds = seeds.to(device)
        with autocast(device, amp):
            output = model(images)
        parts = pixelcam_loss(output, labels, seeds, lam, balanced_seeds=balanced_seeds)
        if seeds is not None and not balanced_seeds and context.is_distributed:
            parts = _pixel_term_over_global_batch(parts, lam, seeds, context)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(parts.total).backward()
        scaler.step(optimizer)
        scaler.update()
        sums += n * np.array([parts.total.item(), parts.image.item(), parts.pixel.item()])
        accuracy.update(output.image_logits.detach().float().cpu().numpy(), labels.cpu().numpy())
        if report is not None:
            report(step, total)
    if accuracy.total == 0:
        raise RuntimeError("the training loader yielded no batch")
    seconds = context.max(time.perf_counter() - started)
    *loss_sums, correct, n_patches, seeds_bg, seeds_fg = context.sum(
        [*sums, accuracy.correct, accuracy.total, *seed_counts]
    )
    loss, image_loss, pixel_loss = (np.array(loss_sums) / n_patches).tolist()
    return EpochStats(
        loss, image_loss, pixel_loss, 100.0 * correct / n_patches, int(n_patches), seconds,
        int(seeds_fg), int(seeds_bg),
    )  # fmt: skip


def _pixel_term_over_global_batch(
    parts: LossParts, lam: float, seeds: torch.Tensor, context: DistContext
) -> LossParts:
    """Rescale a rank's pixel term so DDP's gradient average is the global batch's.

    The partial CE averages over the seeds of the batch; a rank's share of the batch holds
    its own count, so its average is reweighted by world_size x (its seeds / all seeds).
    (Balanced seeds average per kind and stay per rank: close, not equal.)
    """
    mine = float((seeds != IGNORE_INDEX).sum())
    everyone = context.sum([mine])[0]
    pixel = parts.pixel * (context.world_size * mine / everyone if everyone else 0.0)
    return LossParts(parts.image + lam * pixel, parts.image, pixel)


@dataclass
class EvalAccumulators:
    """Classification and (where masks exist) localisation counts of one pass."""

    accuracy: AccuracyAccumulator
    pixel: LocalizationAccumulator | None
    cam: LocalizationAccumulator | None

    @staticmethod
    def combined(shards: Sequence[EvalAccumulators]) -> EvalAccumulators:
        """One pass's counts from the passes over its shares (one per rank)."""
        first, *rest = shards
        for shard in rest:
            first.accuracy.merge(shard.accuracy)
            if first.pixel is not None and shard.pixel is not None:
                first.pixel.merge(shard.pixel)
            if first.cam is not None and shard.cam is not None:
                first.cam.merge(shard.cam)
        return first


def evaluate_batches(
    model: PixelCAM,
    loader: Iterable[dict[str, torch.Tensor]],
    *,
    device: torch.device,
    amp: bool,
    cam_method: CamMethod,
    eval_px: int,
    with_masks: bool,
    report: ProgressFn | None = None,
) -> EvalAccumulators:
    """Accuracy, and with masks the PixelCAM map and the image head's CAM, side by side.

    The CAM is of the true class (as in the WSOL protocol), min-max normalised per patch;
    the PixelCAM map is the pixel head's foreground probability. Both are upsampled to
    ``eval_px`` and compared with the masks at that size.
    """
    model.eval()
    acc = AccuracyAccumulator()
    pixel = LocalizationAccumulator(eval_px) if with_masks else None
    cam = LocalizationAccumulator(eval_px) if with_masks else None
    size = (eval_px, eval_px)
    total = len(loader) if isinstance(loader, Sized) else 0
    for step, batch in enumerate(loader, start=1):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"]
        with torch.no_grad(), autocast(device, amp):
            output = model(images)
        acc.update(output.image_logits.float().cpu().numpy(), labels.numpy())
        if pixel is not None and cam is not None:
            masks = batch["mask"].numpy()
            fg = PixelCAM.foreground_map(output.pixel_logits, size)
            pixel.update(fg.cpu().numpy(), masks)
            with autocast(device, amp):
                cams = compute_cam(model, images, labels.to(device), cam_method)
            cam.update(upsample_map(cams, size).clamp(0, 1).cpu().numpy(), masks)
        if report is not None:
            report(step, total)
    return EvalAccumulators(acc, pixel, cam)
