"""Find run outputs in the directories a report is asked for, and read them into records.

A directory may be a cohort run (``stores/``, ``model/``, ``infer/``), a demo output, an
``infer`` output directory, a training run or a single slide's output folder. Whatever is
missing, partial or of another schema becomes a note on its record, never an exception: only
"nothing at all was found" is an error.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from wsi_pixelcam.atomic_write import TMP_MARK
from wsi_pixelcam.errors import ManifestError
from wsi_pixelcam.inference import outputs
from wsi_pixelcam.report.records import (
    INFER_FAILED,
    INFER_INCOMPLETE,
    INFER_INTERRUPTED,
    INFER_OK,
    INFER_OTHER_SCHEMA,
    Cohort,
    EpochMetrics,
    EvaluationRecord,
    MapScores,
    SlideFiles,
    SlideRecord,
    TrainingRecord,
)
from wsi_pixelcam.training.split_file import DataSummary, read_split

logger = logging.getLogger(__name__)

READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError)
"""What a damaged or foreign file raises while being read; it becomes a note, not a crash."""

SLIDE_OUTPUT_NAMES = ("summary.json", "overlay.png", "rois.geojson", "heatmap.zarr")


def collect(paths: Sequence[Path]) -> Cohort:
    """Records of every slide, training run and evaluation under ``paths``.

    Raises ManifestError when a path does not exist or none of them holds any output.
    """
    slides: dict[str, SlideRecord] = {}
    trainings: list[TrainingRecord] = []
    evaluations: list[EvaluationRecord] = []
    for path in paths:
        if not path.is_dir():
            raise ManifestError(f"{path}: not a directory (give run or output directories)")
        for folder in _candidates(path):
            _read_tile_status(folder, slides)
            _read_infer_dir(folder, slides)
            if _is_training_dir(folder):
                trainings.append(read_training(folder))
            evaluations.extend(_read_evaluations(folder))
    if not (slides or trainings or evaluations):
        raise ManifestError(
            f"{', '.join(map(str, paths))}: no run outputs found (looked for infer/<slide_id>/"
            "summary.json, infer_status.json, tile_status.json, metrics.jsonl and eval JSON)"
        )
    return Cohort(
        tuple(paths),
        tuple(slides[k] for k in sorted(slides)),
        tuple(trainings),
        tuple(evaluations),
    )


def _candidates(path: Path) -> list[Path]:
    """The directory itself and the standard sub-folders of a run that exist."""
    subs = [path / name for name in ("stores", "model", "infer", "eval")]
    return [path, *(p for p in subs if p.is_dir())]


# -- slides -------------------------------------------------------------------------------


def _status_rows(folder: Path, name: str) -> list[dict[str, Any]]:
    """Rows of ``<name>_status.json`` (or its CSV twin), empty when neither is readable."""
    json_path, csv_path = folder / f"{name}_status.json", folder / f"{name}_status.csv"
    try:
        if json_path.is_file():
            rows = json.loads(json_path.read_text())
            return [r for r in rows if isinstance(r, dict) and r.get("slide_id")]
        if csv_path.is_file():
            with open(csv_path, newline="") as handle:
                return [r for r in csv.DictReader(handle) if r.get("slide_id")]
    except READ_ERRORS as exc:
        logger.warning("%s: status table unreadable (%s); ignored", folder, exc)
    return []


def _error_line(row: Mapping[str, Any]) -> str:
    message = str(row.get("message") or "").strip().splitlines()
    text = message[0] if message else "no message"
    return f"{row['error_class']}: {text}" if row.get("error_class") else text


def _seconds(row: Mapping[str, Any]) -> float | None:
    try:
        return float(row["seconds"])
    except READ_ERRORS:
        return None


def _details(row: Mapping[str, Any]) -> dict[str, Any]:
    details = row.get("details") or {}
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except ValueError:
            return {}
    return details if isinstance(details, dict) else {}


def _qc_thumbnail(store: Path) -> Path | None:
    """The tiling QC thumbnail beside a patch store (``<slide_id>.qc/thumbnail.png``)."""
    path = store.parent / f"{store.stem}.qc" / "thumbnail.png"
    return path if path.is_file() else None


def _streamed_thumbnail(out_dir: Path | None) -> Path | None:
    """The QC thumbnail of a slide inferred straight from its file (``<out>/qc/``)."""
    return None if out_dir is None else _existing(out_dir / "qc" / "thumbnail.png")


def _read_tile_status(folder: Path, slides: dict[str, SlideRecord]) -> None:
    for row in _status_rows(folder, "tile"):
        slide_id = str(row["slide_id"])
        record = slides.get(slide_id) or SlideRecord(slide_id)
        store = _details(row).get("store") or folder / f"{slide_id}.zarr"
        thumbnail = record.files.thumbnail or _qc_thumbnail(Path(store))
        failed = row.get("status") == "failed"
        slides[slide_id] = replace(
            record,
            tile_status=str(row.get("status")),
            tile_error=_error_line(row) if failed else None,
            tile_seconds=_seconds(row),
            files=replace(record.files, thumbnail=thumbnail),
        )


def _read_infer_dir(folder: Path, slides: dict[str, SlideRecord]) -> None:
    if (folder / outputs.SUMMARY).is_file():  # a single slide's output folder
        record = _read_slide_folder(folder)
        slides[record.slide_id] = _merge(slides.get(record.slide_id), record)
        return
    for row in _status_rows(folder, "infer"):
        slide_id = str(row["slide_id"])
        record = slides.get(slide_id) or SlideRecord(slide_id)
        if row.get("status") == "failed":
            record = replace(record, infer_status=INFER_FAILED, infer_error=_error_line(row))
        slides[slide_id] = replace(record, infer_seconds=_seconds(row))
    for child in sorted(_subdirs(folder)):
        if TMP_MARK in child.name:
            slide_id = child.name.split(TMP_MARK)[0]
            record = slides.get(slide_id) or SlideRecord(slide_id)
            note = f"a killed run left {child.name}/ (re-run infer to finish it)"
            if record.infer_status not in (INFER_OK, INFER_FAILED):
                record = replace(record, infer_status=INFER_INTERRUPTED)
            slides[slide_id] = replace(record, notes=(*record.notes, note))
        elif any((child / name).exists() for name in SLIDE_OUTPUT_NAMES):
            found = _read_slide_folder(child)
            slides[found.slide_id] = _merge(slides.get(found.slide_id), found)


def _subdirs(folder: Path) -> Iterable[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def _merge(known: SlideRecord | None, found: SlideRecord) -> SlideRecord:
    """A slide folder's record, keeping what status tables said about the same slide."""
    if known is None:
        return found
    failed = known.infer_status == INFER_FAILED
    return replace(
        found,
        tile_status=known.tile_status,
        tile_error=known.tile_error,
        tile_seconds=known.tile_seconds if known.tile_seconds is not None else found.tile_seconds,
        infer_status=INFER_FAILED if failed else found.infer_status,
        infer_error=known.infer_error,
        infer_seconds=known.infer_seconds
        if known.infer_seconds is not None
        else found.infer_seconds,
        files=replace(found.files, thumbnail=found.files.thumbnail or known.files.thumbnail),
        notes=(*known.notes, *found.notes),
    )


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def _read_slide_folder(folder: Path) -> SlideRecord:
    """A slide's output folder: its summary's numbers, or what is wrong with the summary."""
    files = SlideFiles(
        out_dir=folder,
        overlay=_existing(folder / "overlay.png"),
        rois=_existing(folder / "rois.geojson"),
        tiles=next(iter(sorted(folder.glob("tiles.geojson*"))), None),
        heatmap=_existing(folder / "heatmap.zarr"),
        class_probs=_existing(folder / "class_probs.zarr"),
    )
    summary = outputs.read_complete_summary(folder)
    if summary is None:
        status, note = _why_no_summary(folder / outputs.SUMMARY)
        return SlideRecord(folder.name, infer_status=status, files=files, notes=(note,))
    try:
        return _from_summary(summary, files)
    except READ_ERRORS as exc:
        note = f"summary.json lacks a field this report reads ({exc!r})"
        return SlideRecord(folder.name, infer_status=INFER_OTHER_SCHEMA, files=files, notes=(note,))


def _why_no_summary(path: Path) -> tuple[str, str]:
    expected = f"{outputs.SUMMARY_SCHEMA} version {outputs.SUMMARY_VERSION}"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return INFER_INCOMPLETE, "no summary.json: the outputs were never finished"
    except READ_ERRORS:
        return INFER_OTHER_SCHEMA, "summary.json is not readable JSON"
    if not isinstance(summary, dict):
        return INFER_OTHER_SCHEMA, "summary.json is not a JSON object"
    schema, version = summary.get("schema"), summary.get("schema_version")
    if schema != outputs.SUMMARY_SCHEMA or version != outputs.SUMMARY_VERSION:
        return INFER_OTHER_SCHEMA, f"summary.json is {schema} version {version}, not {expected}"
    return INFER_INCOMPLETE, "summary.json is not marked complete"


def _from_summary(summary: Mapping[str, Any], files: SlideFiles) -> SlideRecord:
    prediction, rois, timings = summary["prediction"], summary["rois"], summary["timings_s"]
    store = summary["source"]["store"]
    thumbnail = _qc_thumbnail(Path(store)) if store else _streamed_thumbnail(files.out_dir)
    return SlideRecord(
        slide_id=str(summary["slide_id"]),
        infer_status=INFER_OK,
        infer_seconds=_float(timings.get("total")),
        tile_seconds=_float(timings.get("tile")),
        predicted_class=str(prediction["predicted_class"]),
        class_probs={str(k): float(v) for k, v in prediction["class_probs"].items()},
        n_patches=int(summary["source"]["n_patches"]),
        n_rois=int(rois["count"]),
        roi_area_um2=float(rois["total_area_um2"]),
        roi_class=str(rois["class"]),
        threshold=float(rois["threshold"]),
        threshold_source=str(rois.get("threshold_source", "")),
        roi_frame_qupath=str(rois.get("frame", "")).startswith("qupath"),
        model_name=str(summary["model"]["name"]),
        model_fingerprint=str(summary["model"]["fingerprint"]),
        timings_s={str(k): float(v) for k, v in timings.items()},
        files=replace(files, thumbnail=thumbnail),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# -- training and evaluation ----------------------------------------------------------------


def _is_training_dir(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("metrics.jsonl", "split.json"))


def read_training(folder: Path) -> TrainingRecord:
    """Metrics, split and chosen checkpoint of a training run (``train --out``)."""
    notes: list[str] = []
    epochs = _read_metrics(folder / "metrics.jsonl", notes)
    split = _read_split(folder / "split.json", notes)
    record = TrainingRecord(folder, epochs=epochs, split=split)
    try:
        model_path = Path(json.loads((folder / "train_summary.json").read_text())["model_path"])
    except FileNotFoundError:
        notes.append("no train_summary.json: the run has not finished, so no model was chosen")
        return replace(record, notes=tuple(notes))
    except READ_ERRORS as exc:
        notes.append(f"train_summary.json names no model ({exc!r})")
        return replace(record, notes=tuple(notes))
    return replace(_with_checkpoint(record, model_path, notes), notes=tuple(notes))


def _read_metrics(path: Path, notes: list[str]) -> tuple[EpochMetrics, ...]:
    if not path.is_file():
        notes.append("no metrics.jsonl")
        return ()
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
            values = {
                k: float(v)
                for k, v in row.items()
                if isinstance(v, int | float) and k not in ("stage", "epoch")
            }
            rows.append(EpochMetrics(str(row["stage"]), int(row["epoch"]), values))
        except READ_ERRORS:
            notes.append(f"metrics.jsonl line {number} is not a metrics row; skipped")
    return tuple(rows)


def _read_split(path: Path, notes: list[str]) -> DataSummary | None:
    try:
        return read_split(path)
    except FileNotFoundError:
        notes.append("no split.json")
    except READ_ERRORS as exc:
        notes.append(f"split.json unreadable ({exc!r})")
    return None


def _with_checkpoint(record: TrainingRecord, model_path: Path, notes: list[str]) -> TrainingRecord:
    """The checkpoint's config, validation threshold and the weights fingerprint infer records.

    Loading it needs torch, imported here so that a report without training stays light.
    """
    from wsi_pixelcam.errors import CheckpointError
    from wsi_pixelcam.inference.predict import InferenceModel
    from wsi_pixelcam.model.checkpoint import load_checkpoint

    try:
        network, meta = load_checkpoint(model_path)
    except (CheckpointError, OSError) as exc:
        notes.append(f"model {model_path} cannot be read ({exc})")
        return replace(record, model_path=model_path)
    return replace(
        record,
        model_path=model_path,
        model_fingerprint=InferenceModel(network, meta).fingerprint(),
        val_threshold=meta.val_metrics.get("best_tau"),
        config=dict(meta.train_config),
    )


def _read_evaluations(folder: Path) -> list[EvaluationRecord]:
    """``eval --json`` results: ``eval*.json`` in a run folder, any JSON in ``eval/``."""
    pattern = "*.json" if folder.name == "eval" else "eval*.json"
    found = []
    for path in sorted(folder.glob(pattern)):
        try:
            raw = json.loads(path.read_text())
            found.append(
                EvaluationRecord(
                    source=path,
                    checkpoint=str(raw["checkpoint"]),
                    stage=str(raw["stage"]),
                    n_stores=len(raw["stores"]),
                    n_patches=int(raw["n_patches"]),
                    accuracy=float(raw["accuracy"]),
                    cam_method=str(raw["cam_method"]),
                    pixelcam=_map_scores(raw["pixelcam"]),
                    cam=_map_scores(raw["cam"]),
                )
            )
        except READ_ERRORS:
            logger.info("%s: not an eval --json result; ignored", path)
    return found


def _map_scores(raw: Mapping[str, Any] | None) -> MapScores | None:
    if raw is None:
        return None
    fixed = dict(raw["at_fixed_tau"])
    at_val = dict(raw["at_val_tau"]) if raw.get("at_val_tau") else None
    return MapScores(
        pxap=float(raw["pxap"]),
        fixed_tau=float(fixed.pop("tau")),
        fixed={k: float(v) for k, v in fixed.items()},
        val_tau=_float(raw.get("val_tau")),
        at_val_tau={k: float(v) for k, v in at_val.items() if k != "tau"} if at_val else None,
    )
