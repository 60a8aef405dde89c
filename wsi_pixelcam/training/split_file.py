"""``split.json``: the data a training run trains on, written by ``train``, read by ``report``.

Kept free of torch so a report reads it without loading a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from wsi_pixelcam.errors import DataError


@dataclass(frozen=True)
class DataSummary:
    """The data a run trains on: classes, slide-level split and class balance per side."""

    class_names: tuple[str, ...]
    mpp: float | None
    patch_px: int
    train_stores: tuple[str, ...]
    val_stores: tuple[str, ...]
    train_slides: tuple[str, ...]
    val_slides: tuple[str, ...]
    train_counts: tuple[int, ...]
    val_counts: tuple[int, ...]
    val_has_masks: bool


def fix_split(path: Path, summary: DataSummary) -> None:
    """Record the split; a later call (another stage, a resume) must see the same one."""
    current = json.loads(json.dumps(asdict(summary)))
    if path.is_file():
        saved = json.loads(path.read_text())
        keys = ("class_names", "train_slides", "val_slides")
        if any(saved.get(k) != current[k] for k in keys):
            raise DataError(
                f"{path}: this run was split into other classes or slides "
                f"(train {saved.get('train_slides')}, val {saved.get('val_slides')}); pass "
                "the same stores and seed, or use a fresh output directory"
            )
        return
    path.write_text(json.dumps(current, indent=2) + "\n")


def read_split(path: Path) -> DataSummary:
    """The summary ``fix_split`` wrote; OSError, ValueError, KeyError or TypeError when the
    file is missing or not one."""
    raw = json.loads(path.read_text())
    return DataSummary(
        class_names=tuple(raw["class_names"]),
        mpp=None if raw["mpp"] is None else float(raw["mpp"]),
        patch_px=int(raw["patch_px"]),
        train_stores=tuple(raw["train_stores"]),
        val_stores=tuple(raw["val_stores"]),
        train_slides=tuple(raw["train_slides"]),
        val_slides=tuple(raw["val_slides"]),
        train_counts=tuple(int(n) for n in raw["train_counts"]),
        val_counts=tuple(int(n) for n in raw["val_counts"]),
        val_has_masks=bool(raw["val_has_masks"]),
    )
