"""``tile_slide``: one slide file in, one complete patch store out (or a clear error)."""

from __future__ import annotations

import logging
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from wsi_pixelcam.config import TileConfig
from wsi_pixelcam.errors import StoreError
from wsi_pixelcam.geo.raster import patch_masks
from wsi_pixelcam.geometry import LevelChoice
from wsi_pixelcam.labels import LabelSource, PatchLabels, compute_labels
from wsi_pixelcam.progress import ProgressFn
from wsi_pixelcam.slide import Mpp, SlideReader, open_slide
from wsi_pixelcam.store.lock import StoreLock
from wsi_pixelcam.store.meta import (
    LabelsSection,
    MppSection,
    PatchStoreMeta,
    SlideSection,
    TilingSection,
    TissueSection,
)
from wsi_pixelcam.store.outdir import ensure_writable_dir
from wsi_pixelcam.store.patch_store import (
    MASK_CHUNK_ROWS,
    PatchStoreWriter,
    find_complete_store,
    mask_px_for,
    remove_stale_temporaries,
)
from wsi_pixelcam.tiling.grid import Grid
from wsi_pixelcam.tiling.patch_reader import iter_patches
from wsi_pixelcam.tiling.qc import StagedQC, stage_qc
from wsi_pixelcam.tiling.slide_plan import check_unreadable, plan_slide, quick_hash

log = logging.getLogger(__name__)


_VERSIONED = (
    "wsi-pixelcam",
    "numpy",
    "zarr",
    "tiffslide",
    "tifffile",
    "openslide-python",
    "openslide-bin",
    "imagecodecs",
    "scikit-image",
    "shapely",
    "pillow",
)


@dataclass(frozen=True)
class TilingResult:
    """What happened to one slide; small enough to cross process boundaries."""

    slide_id: str
    store_path: str
    status: str  # "ok" or "skipped"
    n_patches: int
    n_bad_patches: int
    mpp: float
    mpp_source: str
    backend: str
    seconds: float
    message: str = ""


def store_path_for(out_dir: Path, slide_id: str) -> Path:
    return Path(out_dir) / f"{slide_id}.zarr"


def requested_params(
    cfg: TileConfig, mpp_override: float | None, labels: LabelSource
) -> dict[str, Any]:
    """Everything that decides a store's content; a stored copy that differs is stale."""
    return {**cfg.grid_params(), "mpp_override": mpp_override, "label_source": labels.describe()}


def _serves(made: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """A store serves a request made with the same parameters; one with labels also serves
    the same request without labels (inference needs none)."""
    if made == wanted:
        return True
    if wanted.get("label_source") != "none":
        return False
    return {k: v for k, v in made.items() if k != "label_source"} == {
        k: v for k, v in wanted.items() if k != "label_source"
    }


def tile_slide(
    slide_path: str | Path,
    cfg: TileConfig,
    out_dir: str | Path,
    *,
    slide_id: str | None = None,
    mpp_override: float | None = None,
    labels: LabelSource | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> TilingResult:
    """Tile one slide into ``out_dir/<slide_id>.zarr``.

    A complete store tiled with the same parameters is skipped; one tiled with other
    parameters is refused unless ``overwrite`` (so a config typo never silently wipes a
    cohort's stores). Raises a WsiPixelcamError subclass naming the file on bad input.
    """
    started = time.perf_counter()
    labels = labels or LabelSource()
    slide_path = Path(slide_path)
    out_dir = Path(out_dir)
    slide_id = slide_id or slide_path.stem
    final = store_path_for(out_dir, slide_id)
    wanted = requested_params(cfg, mpp_override, labels)
    done = _finished_result(final, slide_id, wanted, overwrite, started)
    if done is not None:
        return done
    ensure_writable_dir(out_dir)
    with StoreLock(final):
        # another run may have finished this store between the check above and the lock
        done = _finished_result(final, slide_id, wanted, overwrite, started)
        if done is not None:
            return done
        remove_stale_temporaries(final)
        return _tile_locked(
            slide_path, cfg, final, slide_id, mpp_override, labels, wanted, progress, started
        )


def _finished_result(
    final: Path, slide_id: str, wanted: dict[str, Any], overwrite: bool, started: float
) -> TilingResult | None:
    """A "skipped" result when a complete store serves ``wanted``; None when tiling is due.

    Raises StoreError for a complete store made with other parameters, unless ``overwrite``.
    """
    try:
        store = find_complete_store(final)
    except StoreError:
        if overwrite:
            return None  # a damaged or foreign complete store: re-tile it as asked
        raise
    if store is None:
        return None
    existing = store.meta
    requested = existing.requested or {}
    if _serves(requested, wanted):
        message = "complete store with the same parameters"
        masked = store.derived_record("masks") is not None
        if str(wanted["label_source"]).startswith("annotations") and not masked:
            message += " (tiled before stores kept ROI masks: eval --annotations adds them)"
        return TilingResult(
            slide_id,
            str(final),
            "skipped",
            existing.n_patches,
            existing.tiling.n_bad_patches,
            existing.mpp_level0 or 0.0,
            existing.mpp.source if existing.mpp else "",
            existing.slide.backend,
            time.perf_counter() - started,
            message,
        )
    if not overwrite:
        changed = sorted(k for k in wanted if requested.get(k) != wanted[k])
        raise StoreError(
            f"{final}: already tiled with other parameters ({', '.join(changed)} differ); "
            "pass --overwrite to re-tile it"
        )
    return None


def _tile_locked(
    slide_path: Path,
    cfg: TileConfig,
    final: Path,
    slide_id: str,
    mpp_override: float | None,
    label_source: LabelSource,
    wanted: dict[str, Any],
    progress: ProgressFn | None,
    started: float,
) -> TilingResult:
    with open_slide(slide_path, cfg.backend) as reader:
        plan = plan_slide(reader, slide_path, cfg, mpp_override)
        mpp, choice, thumb, mask, grid = plan.mpp, plan.choice, plan.thumbnail, plan.mask, plan.grid
        thumb_px_level0 = plan.thumb_px_level0
        patch_level0 = cfg.patch_px * choice.scale_level0
        labels = compute_labels(
            label_source,
            grid.xy_level0,
            patch_level0,
            reader.dimensions,
            reader.bounds_offset,
            cfg.labels,
            str(slide_path),
        )
        # the QC files (PNGs, tissue outline) are written by a thread while the patches are:
        # a fixed cost of every slide that need not hold up the first patch
        with ThreadPoolExecutor(1, thread_name_prefix="wsi-qc") as qc_pool, ExitStack() as undo:
            staging = qc_pool.submit(
                stage_qc,
                final.with_name(f"{slide_id}.qc"),
                thumb.rgb,
                mask,
                level0_per_px=thumb_px_level0,
                mpp_level0=mpp.mean,
                frame_offset=reader.bounds_offset,
                min_hole_um2=cfg.tissue.min_hole_um2,
                metadata={"slide": slide_path.name, "frame": "qupath (level0 minus bounds offset)"},
            )
            undo.callback(_discard_staged, staging)
            writer = PatchStoreWriter(
                final,
                patch_px=cfg.patch_px,
                capacity=len(grid),
                compression=cfg.store.compression,
                jpeg_quality=cfg.store.jpeg_quality,
                shard_mib=cfg.store.shard_mib,
            )
            undo.callback(writer.abort)
            kept, bad = _write_patches(writer, reader, choice, grid, cfg, progress)
            check_unreadable(slide_path, len(bad), len(grid), cfg.max_bad_patch_frac)
            if bad:
                log.warning("%s: skipped %d undecodable patches", slide_path, len(bad))
            _write_masks(writer, labels, grid.xy_level0[kept] - reader.bounds_offset, patch_level0)
            qc = staging.result()
            meta = _store_meta(
                slide_id, slide_path, reader, mpp, choice, grid, cfg, len(kept), bad,
                thumb_px_level0, labels, qc.files, wanted,
            )  # fmt: skip
            writer.finalize(
                meta,
                labels=labels.labels[kept],
                label_coverage=labels.roi_coverage[kept],
                thumbnail=thumb.rgb,
                tissue_mask=mask,
            )
            undo.pop_all()  # complete: keep the store and its QC files
        qc.publish()  # only once the store is complete
        return TilingResult(
            slide_id,
            str(final),
            "ok",
            len(kept),
            len(bad),
            mpp.mean,
            mpp.source,
            reader.backend.name,
            time.perf_counter() - started,
        )


def _discard_staged(staging: Future[StagedQC]) -> None:
    """Remove the QC files staged for a store that failed, once their thread is done."""
    try:
        staged = staging.result()
    except Exception:
        return  # staging failed, and removed what it had written
    staged.discard()


def _write_patches(
    writer: PatchStoreWriter,
    reader: SlideReader,
    choice: LevelChoice,
    grid: Grid,
    cfg: TileConfig,
    progress: ProgressFn | None,
) -> tuple[np.ndarray, list[int]]:
    """Stream patches into the writer; return (kept grid indices, bad grid indices)."""
    kept: list[int] = []
    bad: list[int] = []
    total = len(grid)
    for read in iter_patches(
        reader, choice, grid.target_xy, cfg.patch_px, cfg.stride, cfg.read_threads
    ):
        if read.pixels is None:
            bad.append(read.index)
        else:
            writer.append(
                read.pixels, tuple(grid.xy_level0[read.index]), grid.tissue_frac[read.index]
            )
            kept.append(read.index)
        done = len(kept) + len(bad)
        if progress is not None and (done % 64 == 0 or done == total):
            progress(done, total)
    return np.asarray(kept, dtype=np.int64), bad


def _write_masks(
    writer: PatchStoreWriter, labels: PatchLabels, corners: np.ndarray, patch_level0: float
) -> None:
    """Store the ROI masks of annotated slides (``corners`` in QuPath's frame); none for
    other label sources."""
    if labels.rois is None:
        return
    mask_px = mask_px_for(writer.patch_px)
    writer.add_rows(
        "masks",
        shape=(len(corners), mask_px, mask_px),
        dtype="uint8",
        chunk_rows=MASK_CHUNK_ROWS,
        blocks=patch_masks(labels.rois, corners, patch_level0, mask_px, MASK_CHUNK_ROWS),
        record={"source": "annotations", "path": labels.source["path"], "mask_px": mask_px},
    )


def _store_meta(
    slide_id: str,
    slide_path: Path,
    reader: SlideReader,
    mpp: Mpp,
    choice: LevelChoice,
    grid: Grid,
    cfg: TileConfig,
    n_kept: int,
    bad: list[int],
    thumb_px_level0: float,
    labels: PatchLabels,
    qc_files: dict[str, Any],
    wanted: dict[str, Any],
) -> PatchStoreMeta:
    """What the store says about itself: the slide, its resolution, how it was cut."""
    return PatchStoreMeta(
        slide_id=slide_id,
        n_patches=n_kept,
        slide=_slide_section(slide_path, reader),
        mpp=MppSection(
            value=mpp.mean, x=mpp.x, y=mpp.y, source=mpp.source, estimated=mpp.estimated
        ),
        tiling=TilingSection(
            target_mpp=cfg.target_mpp,
            effective_mpp=choice.scale_level0 * mpp.mean,
            patch_px=cfg.patch_px,
            stride_px=cfg.stride,
            patch_level0=cfg.patch_px * choice.scale_level0,
            stride_level0=cfg.stride * choice.scale_level0,
            read_level=choice.level,
            read_level_downsample=choice.level_downsample,
            resize_factor=choice.resize_factor,
            min_tissue_frac=cfg.min_tissue_frac,
            n_candidates=grid.n_candidates,
            n_bad_patches=len(bad),
            bad_patch_xy_level0=tuple(tuple(grid.xy_level0[i].tolist()) for i in bad[:100]),
            order="blocks of neighbouring patches; coords are authoritative",
        ),
        tissue=TissueSection(**cfg.tissue.model_dump(), thumbnail_level0_per_px=thumb_px_level0),
        store=cfg.store.model_dump(),
        labels=LabelsSection(
            classes=tuple(labels.classes), source=labels.source, rule=cfg.labels.model_dump()
        ),
        qc={"dir": f"{slide_id}.qc", **qc_files},
        requested=wanted,
        versions=_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _slide_section(path: Path, reader: SlideReader) -> SlideSection:
    size, digest = quick_hash(path)
    return SlideSection(
        path=str(path.resolve()),
        name=path.name,
        size_bytes=size,
        content_hash=digest,
        hash_method="sha256 of size + first and last MiB",
        backend=reader.backend.name,
        backend_version=reader.backend.version,
        backend_reason=reader.backend.reason,
        dimensions_level0=reader.dimensions,
        level_dimensions=tuple(reader.level_dimensions),
        level_downsamples=tuple(reader.level_downsamples),
        bounds_offset=reader.bounds_offset,
    )


def _versions() -> dict[str, str]:
    return dict(_installed_versions())


@cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    """Looked up once per process, not per slide (package metadata reads: 8 ms here)."""
    found = [("python", platform.python_version())]
    for name in _VERSIONED:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            continue
    return tuple(found)
