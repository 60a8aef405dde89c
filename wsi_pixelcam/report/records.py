"""What a report shows, read from run outputs: typed, immutable, and free of rendering.

Every field that may be missing from a run on disk is optional, so a half-finished or failed
run still yields records; ``notes`` say in words what was missing or odd.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wsi_pixelcam.training.split_file import DataSummary

# Outcome of a slide's inference as the outputs on disk show it.
INFER_OK = "ok"  # a complete summary.json of the schema this report reads
INFER_FAILED = "failed"  # the status table records an error
INFER_INTERRUPTED = "interrupted"  # only a killed run's OUT/<slide_id>.tmp-* folder
INFER_INCOMPLETE = "incomplete"  # an output folder without a complete summary
INFER_OTHER_SCHEMA = "other schema"  # summary.json of another schema or version
INFER_NOT_RUN = "not run"  # tiled (or listed) but never inferred


@dataclass(frozen=True)
class SlideFiles:
    """Where a slide's outputs are; None where the file does not exist."""

    out_dir: Path | None = None
    thumbnail: Path | None = None
    overlay: Path | None = None
    rois: Path | None = None
    tiles: Path | None = None
    heatmap: Path | None = None
    class_probs: Path | None = None


@dataclass(frozen=True)
class SlideRecord:
    """One slide: its tiling and inference outcome and, when inferred, its summary numbers."""

    slide_id: str
    tile_status: str | None = None  # "ok" / "skipped" / "failed", None without a status table
    tile_error: str | None = None
    tile_seconds: float | None = None
    infer_status: str = INFER_NOT_RUN
    infer_error: str | None = None
    infer_seconds: float | None = None
    predicted_class: str | None = None
    class_probs: Mapping[str, float] = field(default_factory=dict)
    n_patches: int | None = None
    n_rois: int | None = None
    roi_area_um2: float | None = None
    roi_class: str | None = None
    threshold: float | None = None
    threshold_source: str | None = None
    roi_frame_qupath: bool = True
    model_name: str | None = None
    model_fingerprint: str | None = None
    timings_s: Mapping[str, float] = field(default_factory=dict)
    files: SlideFiles = field(default_factory=SlideFiles)
    notes: tuple[str, ...] = ()

    @property
    def probability(self) -> float | None:
        """Slide-level probability of the predicted class."""
        if self.predicted_class is None:
            return None
        return self.class_probs.get(self.predicted_class)

    @property
    def status(self) -> str:
        """One word for filtering: a tiling failure outranks what inference shows."""
        return "failed" if self.tile_status == "failed" else self.infer_status

    @property
    def error(self) -> str | None:
        return self.tile_error or self.infer_error


@dataclass(frozen=True)
class EpochMetrics:
    """One ``metrics.jsonl`` line: a stage's epoch and its numeric values."""

    stage: str
    epoch: int
    values: Mapping[str, float]


@dataclass(frozen=True)
class TrainingRecord:
    """A training run directory: per-epoch metrics, split, chosen model and its fingerprint."""

    run_dir: Path
    epochs: tuple[EpochMetrics, ...] = ()
    split: DataSummary | None = None
    model_path: Path | None = None
    model_fingerprint: str | None = None
    val_threshold: float | None = None
    config: Mapping[str, object] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MapScores:
    """One map's localisation scores (percent) as ``wsi-pixelcam eval --json`` writes them."""

    pxap: float
    fixed_tau: float
    fixed: Mapping[str, float]
    val_tau: float | None
    at_val_tau: Mapping[str, float] | None


@dataclass(frozen=True)
class EvaluationRecord:
    """One ``eval --json`` result: PixelCAM map and teacher CAM on the same stores."""

    source: Path
    checkpoint: str
    stage: str
    n_stores: int
    n_patches: int
    accuracy: float
    cam_method: str
    pixelcam: MapScores | None
    cam: MapScores | None


@dataclass(frozen=True)
class Cohort:
    """Everything found in the directories a report was asked for."""

    inputs: tuple[Path, ...]
    slides: tuple[SlideRecord, ...]
    trainings: tuple[TrainingRecord, ...] = ()
    evaluations: tuple[EvaluationRecord, ...] = ()
