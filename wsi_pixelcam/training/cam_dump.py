"""Stage 2: the teacher's CAMs of every patch, stored as a ``cams`` array in its patch store.

Each patch gets the CAM of its true class (of the predicted class where it is unlabelled),
computed once on the un-augmented patch in eval mode, min-max normalised to [0, 1] and kept
at feature resolution as float16. The store's ``attrs["cams"]`` records the teacher file's
SHA-256 and the CAM method; a dump made by another teacher, with another method, or cut short
(see :mod:`wsi_pixelcam.data.store_arrays`) is redone, an up-to-date one skipped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from wsi_pixelcam.data.patch_dataset import PatchDataset, read_store_info
from wsi_pixelcam.data.store_arrays import add_array, completed_record
from wsi_pixelcam.data.transforms import EvalTransform
from wsi_pixelcam.model.amp import autocast
from wsi_pixelcam.model.cam import CamMethod, compute_cam
from wsi_pixelcam.model.checkpoint import CheckpointMeta, load_checkpoint
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.progress import TaskProgress
from wsi_pixelcam.training.loop import make_loader

logger = logging.getLogger(__name__)

CAMS = "cams"


@dataclass(frozen=True)
class CamDumpResult:
    """One store's dump: ``written`` now or already ``up to date``."""

    store: Path
    status: Literal["written", "up to date"]
    n_patches: int
    feature_hw: tuple[int, int]
    seconds: float


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def cams_up_to_date(store_path: str | Path, teacher_sha256: str, method: str) -> bool:
    """True if the store holds a complete dump by this teacher file with this method."""
    record = completed_record(store_path, CAMS)
    return bool(
        record and record.get("teacher_sha256") == teacher_sha256 and record.get("method") == method
    )


def dump_cams(
    checkpoint: str | Path,
    store_paths: Sequence[str | Path],
    *,
    method: CamMethod = CamMethod.CAM,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | None = None,
    amp: bool = True,
    progress: TaskProgress | None = None,
) -> list[CamDumpResult]:
    """Write the teacher CAMs of ``checkpoint`` into each store (skipping up-to-date ones)."""
    device = device or torch.device("cpu")
    teacher_sha = file_sha256(checkpoint)
    model: PixelCAM | None = None
    meta: CheckpointMeta | None = None
    results = []
    for path in store_paths:
        started = time.perf_counter()
        if cams_up_to_date(path, teacher_sha, method):
            record = completed_record(path, CAMS) or {}
            h, w = record.get("feature_hw", (0, 0))
            n = int(record.get("n_patches", 0))
            results.append(CamDumpResult(Path(path), "up to date", n, (int(h), int(w)), 0.0))
            continue
        if model is None or meta is None:
            model, meta = load_checkpoint(checkpoint, map_location=device)
        n_patches, feature_hw = _dump_one(
            Path(path), model, meta, teacher_sha, Path(checkpoint), method,
            batch_size, num_workers, device, amp, progress,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        results.append(CamDumpResult(Path(path), "written", n_patches, feature_hw, seconds))
    return results


def _dump_one(
    path: Path,
    model: PixelCAM,
    meta: CheckpointMeta,
    teacher_sha: str,
    checkpoint: Path,
    method: CamMethod,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    amp: bool,
    progress: TaskProgress | None,
) -> tuple[int, tuple[int, int]]:
    info = read_store_info(path)
    dataset = PatchDataset(
        [info],
        meta.class_names,
        EvalTransform(meta.input_px, meta.mean, meta.std),
        labelled_only=False,
    )
    loader = make_loader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        seed=0,
        device=device,
    )
    model.eval()
    with torch.no_grad():
        probe = model(torch.zeros(1, 3, meta.input_px, meta.input_px, device=device))
    feature_hw = (int(probe.features.shape[-2]), int(probe.features.shape[-1]))
    total = len(loader)
    report = progress(f"cams {info.slide_id}") if progress is not None else None

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        for step, batch in enumerate(loader, start=1):
            images = batch["image"].to(device)
            labels = batch["label"].to(device)
            with autocast(device, amp):
                if bool((labels < 0).any()):
                    with torch.no_grad():
                        predicted = model(images).image_logits.argmax(dim=1)
                    labels = torch.where(labels >= 0, labels, predicted)
                cams = compute_cam(model, images, labels, method)
            yield int(batch["index"][0]), cams.float().cpu().numpy().astype(np.float16)
            if report is not None:
                report(step, total)

    record = {
        "teacher_sha256": teacher_sha,
        "teacher_path": str(checkpoint),
        "method": method,
        "input_px": meta.input_px,
        "feature_hw": list(feature_hw),
        "n_patches": info.n_patches,
        "class_names": list(meta.class_names),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    add_array(
        path,
        CAMS,
        shape=(info.n_patches, *feature_hw),
        dtype="float16",
        chunk_rows=max(1, 2**20 // (2 * feature_hw[0] * feature_hw[1])),
        record=record,
        blocks=blocks(),
    )
    logger.info(
        "%s: %d teacher CAMs (%s, %dx%d) written", path, info.n_patches, method, *feature_hw
    )
    return info.n_patches, feature_hw
