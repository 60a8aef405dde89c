"""Which slides a batch processes, and the per-slide job functions dask runs.

Inputs are slide files, directories (optionally recursive) or a manifest CSV with a ``path``
column and optional ``slide_id``, ``mpp``, ``label`` and ``annotations`` columns (relative
paths are relative to the manifest). Slide ids must be unique: they name the output stores.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_pixelcam.config import InferConfig, TileConfig
from wsi_pixelcam.errors import ManifestError
from wsi_pixelcam.slide.mpp import check_mpp_value

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".vms",
    ".vmu",
    ".scn",
    ".bif",
    ".svslide",
    ".dcm",
)
ANNOTATION_SUFFIXES = (".geojson", ".geojson.gz", ".json")
MANIFEST_COLUMNS = ("path", "slide_id", "mpp", "label", "annotations")
PROGRESS_TOPIC = "wsi-pixelcam-progress"


@dataclass(frozen=True)
class SlideJob:
    """One slide to process, with its per-slide overrides from a manifest or the CLI."""

    path: str
    slide_id: str
    mpp: float | None = None
    label: str | None = None
    annotations: str | None = None


def slide_id_for(path: Path) -> str:
    """File name without the slide suffix (``a.ome.tif`` -> ``a``); a DICOM folder's name."""
    if path.suffix.lower() == ".dcm":
        return path.parent.name
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *SLIDE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def discover_slides(
    inputs: Sequence[Path], recursive: bool = False, *, stores: bool = False
) -> list[Path]:
    """Slide files named directly or found in directories; one file per DICOM folder.

    With ``stores``, patch stores (``*.zarr`` folders) count as inputs too (for ``infer``).
    """
    found: list[Path] = []
    for item in inputs:
        if item.is_dir() and not (stores and _is_store(item)):
            pattern = "**/*" if recursive else "*"
            hits = sorted(
                p
                for p in item.glob(pattern)
                if (p.is_file() and _is_slide(p)) or (stores and _is_store(p))
            )
            if not hits:
                log.warning(
                    "%s: no slide files found%s", item, "" if recursive else " (try --recursive)"
                )
            found.extend(hits)
        else:
            found.append(item)
    seen_dicom_dirs: set[Path] = set()
    unique: list[Path] = []
    for path in found:
        if path.suffix.lower() == ".dcm":
            if path.parent in seen_dicom_dirs:
                continue
            seen_dicom_dirs.add(path.parent)
        unique.append(path)
    return unique


def _is_store(path: Path) -> bool:
    return path.is_dir() and path.suffix == ".zarr" and (path / "zarr.json").is_file()


def _is_slide(path: Path) -> bool:
    return path.name.lower().endswith(SLIDE_SUFFIXES) and not path.name.startswith(".")


def jobs_from_paths(paths: Sequence[Path], annotations_dir: Path | None = None) -> list[SlideJob]:
    jobs = [SlideJob(str(p), slide_id_for(p)) for p in paths]
    if annotations_dir is not None:
        jobs = [_with_annotations(job, annotations_dir) for job in jobs]
    check_unique_ids(jobs)
    return jobs


def _with_annotations(job: SlideJob, annotations_dir: Path) -> SlideJob:
    for suffix in ANNOTATION_SUFFIXES:
        candidate = annotations_dir / f"{job.slide_id}{suffix}"
        if candidate.exists():
            return SlideJob(job.path, job.slide_id, job.mpp, job.label, str(candidate))
    log.info(
        "%s: no annotation file in %s; its patches stay unlabelled", job.slide_id, annotations_dir
    )
    return job


def jobs_from_manifest(manifest: Path, annotations_dir: Path | None = None) -> list[SlideJob]:
    """Read a manifest CSV; bad columns or values fail naming the file and line."""
    try:
        with open(manifest, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            if "path" not in columns:
                raise ManifestError(
                    f"{manifest}: manifest needs a 'path' column (has {sorted(columns)})"
                )
            unknown = columns - set(MANIFEST_COLUMNS)
            if unknown:
                raise ManifestError(
                    f"{manifest}: unknown manifest columns {sorted(unknown)} "
                    f"(known: {MANIFEST_COLUMNS})"
                )
            jobs = [_job_from_row(manifest, line, row) for line, row in enumerate(reader, start=2)]
    except OSError as exc:
        raise ManifestError(f"{manifest}: cannot read manifest ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{manifest}: not a text CSV file") from exc
    if not jobs:
        raise ManifestError(f"{manifest}: manifest lists no slides")
    if annotations_dir is not None:
        jobs = [j if j.annotations else _with_annotations(j, annotations_dir) for j in jobs]
    check_unique_ids(jobs)
    return jobs


def _job_from_row(manifest: Path, line: int, row: dict[str, str]) -> SlideJob:
    raw = (row.get("path") or "").strip()
    if not raw:
        raise ManifestError(f"{manifest}:{line}: empty path")
    path = _resolve(manifest, raw)
    mpp: float | None = None
    if (row.get("mpp") or "").strip():
        try:
            mpp = float(row["mpp"])
        except ValueError as exc:
            raise ManifestError(f"{manifest}:{line}: mpp {row['mpp']!r} is not a number") from exc
        check_mpp_value(mpp, f"{manifest}:{line}: mpp")
    annotations = (row.get("annotations") or "").strip()
    return SlideJob(
        str(path),
        (row.get("slide_id") or "").strip() or slide_id_for(path),
        mpp,
        (row.get("label") or "").strip() or None,
        str(_resolve(manifest, annotations)) if annotations else None,
    )


def _resolve(manifest: Path, raw: str) -> Path:
    path = Path(raw).expanduser()
    return path if path.is_absolute() else manifest.parent / path


def check_unique_ids(jobs: Sequence[SlideJob]) -> None:
    seen: dict[str, str] = {}
    for job in jobs:
        if job.slide_id in seen:
            raise ManifestError(
                f"slide id {job.slide_id!r} is used by both {seen[job.slide_id]} and {job.path}; "
                "give them distinct slide_id values in a manifest"
            )
        seen[job.slide_id] = job.path


def report_progress(slide_id: str, done: int, total: int) -> None:
    """Publish per-slide patch progress from a dask worker; a no-op anywhere else."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:
        return
    worker.log_event(PROGRESS_TOPIC, {"slide_id": slide_id, "done": done, "total": total})


def tile_job(
    job: SlideJob,
    *,
    cfg: TileConfig,
    out_dir: str,
    overwrite: bool,
    mpp_override: float | None = None,
    label_points: dict[str, tuple[tuple[int, int, str], ...]] | None = None,
) -> tuple[str, str, dict[str, Any]]:
    """Tile one slide inside a dask worker (the slide is opened here, not in the client)."""
    from wsi_pixelcam.labels import LabelSource
    from wsi_pixelcam.tiling import tile_slide

    points = (label_points or {}).get(job.slide_id)
    source = LabelSource(
        annotations=Path(job.annotations) if job.annotations else None,
        points=points,
        slide_label=job.label if not job.annotations and points is None else None,
    )
    result = tile_slide(
        job.path,
        cfg,
        out_dir,
        slide_id=job.slide_id,
        mpp_override=job.mpp if job.mpp is not None else mpp_override,
        labels=source,
        overwrite=overwrite,
        progress=lambda done, total: report_progress(job.slide_id, done, total),
    )
    details = {
        "n_patches": result.n_patches,
        "n_bad_patches": result.n_bad_patches,
        "mpp": round(result.mpp, 5),
        "mpp_source": result.mpp_source,
        "backend": result.backend,
        "store": result.store_path,
    }
    return result.status, result.message, details


def infer_job(
    job: SlideJob,
    *,
    cfg: InferConfig,
    model_path: str,
    out_dir: str,
    overwrite: bool = False,
    keep_store: bool = False,
    stores_dir: str | None = None,
    mpp_override: float | None = None,
) -> tuple[str, str, dict[str, Any]]:
    """Infer one slide or patch store inside a dask worker (checkpoint and slide opened here)."""
    from wsi_pixelcam.inference.infer import infer_slide
    from wsi_pixelcam.inference.predict import load_model

    result = infer_slide(
        job.path,
        load_model(model_path),
        cfg,
        out_dir,
        slide_id=job.slide_id,
        keep_store=keep_store,
        stores_dir=stores_dir,
        mpp_override=job.mpp if job.mpp is not None else mpp_override,
        overwrite=overwrite,
        progress=lambda done, total: report_progress(job.slide_id, done, total),
    )
    details = {
        "n_patches": result.n_patches,
        "n_rois": result.n_rois,
        "roi_area_um2": round(result.roi_area_um2, 1),
        "threshold": result.threshold,
        "predicted_class": result.predicted_class,
        "class_probs": {k: round(v, 4) for k, v in result.class_probs.items()},
        "out_dir": result.out_dir,
    }
    return result.status, result.message, details
