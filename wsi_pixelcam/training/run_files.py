"""What makes a stage resumable: its ``state.pt`` and its rows in the run's ``metrics.jsonl``.

``state.pt`` holds weights, optimiser, scaler and kept checkpoints after the last finished
epoch, and the settings the weights depend on (a resume with others is refused). Each
epoch's metrics row is written before its state, and a resumed run drops rows past its
state's epoch, so the log never holds an epoch twice. Only rank 0 writes either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsi_pixelcam.atomic_write import replaced_when_done
from wsi_pixelcam.errors import ConfigError, OutputError
from wsi_pixelcam.model.pixelcam import PixelCAM

STATE_FORMAT = 1


@dataclass(frozen=True)
class Best:
    """A kept checkpoint: its file, the epoch it is from and its score."""

    path: Path
    epoch: int
    score: float


@dataclass(frozen=True)
class Resumable:
    """The objects a stage's state restores."""

    model: PixelCAM
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def save_state(
    stage_dir: Path,
    run_params: dict[str, Any],
    parts: Resumable,
    epoch: int,
    bests: dict[str, Best | None],
) -> None:
    """Write ``state.pt`` (atomically) after ``epoch``."""
    payload = {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "run_params": json.loads(json.dumps(run_params)),
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "bests": {
            k: None if b is None else {"epoch": b.epoch, "score": b.score} for k, b in bests.items()
        },
    }
    with replaced_when_done(stage_dir / "state.pt") as tmp:
        torch.save(payload, tmp)


def load_state(
    stage_dir: Path,
    run_params: dict[str, Any],
    parts: Resumable,
    bests: dict[str, Best | None],
    device: torch.device,
) -> int:
    """Restore ``state.pt`` if there is one; return the last finished epoch (0 if none)."""
    path = stage_dir / "state.pt"
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise OutputError(f"{path}: resume state of another format; use a fresh output dir")
    saved = state["run_params"]
    wanted = json.loads(json.dumps(run_params))
    if saved != wanted:
        changed = sorted(_diff(saved, wanted))
        raise ConfigError(
            f"{stage_dir}: holds a {stage_dir.name} run made with other settings "
            f"({', '.join(changed[:5])}); use a fresh output directory or the same config"
        )
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scaler.load_state_dict(state["scaler"])
    for kind, info in state["bests"].items():
        if info is not None:
            bests[kind] = Best(
                stage_dir / f"best_{kind}.pt", int(info["epoch"]), float(info["score"])
            )
    return int(state["epoch"])


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        ]
    return [] if a == b else [prefix.rstrip(".")]


def append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as stream:
        stream.write(json.dumps(row) + "\n")


def read_rows(path: Path, stage: str) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("stage") == stage]


def truncate_rows(path: Path, stage: str, last_epoch: int) -> None:
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
