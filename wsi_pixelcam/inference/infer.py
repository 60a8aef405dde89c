"""``infer_slide``: a slide or patch store in, heatmaps, overlay, ROIs and summary out.

Outputs land in ``OUT/<slide_id>/``: ``heatmap.zarr`` (multiscale, at ``output_mpp``; channel
0 the foreground probability, then the teacher CAM when asked for), ``class_probs.zarr`` (one
channel per class, one pixel per grid stride: the patch resolution those values have),
``overlay.png``, ``rois.geojson``, optionally ``tiles.geojson[.gz]``, and ``summary.json``,
written last. A slide file is streamed (:mod:`.slide_stream`: cut with the checkpoint's
resolution and patch size while the model runs, its tissue QC files in ``qc/``), or, with
``keep_store``, tiled first into a patch store. Stitching runs in background threads while
the model predicts."""

from __future__ import annotations

import logging
import math
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from wsi_pixelcam import __version__
from wsi_pixelcam.config import InferConfig
from wsi_pixelcam.errors import ConfigError, ModelError, OutputError, StoreError
from wsi_pixelcam.geo.geojson import write_geojson
from wsi_pixelcam.inference import outputs
from wsi_pixelcam.inference.device_turns import device_turn, stream_read_threads
from wsi_pixelcam.inference.patch_source import PatchSource, SourceGeometry, StoreSource
from wsi_pixelcam.inference.predict import InferenceModel, predict_source
from wsi_pixelcam.inference.rois import Roi, extract_rois
from wsi_pixelcam.inference.settings import resolve_threshold, roi_index, tile_config
from wsi_pixelcam.inference.slide_stream import SlideStream
from wsi_pixelcam.inference.stitch import Stitcher
from wsi_pixelcam.inference.stitch_queue import StitchQueue
from wsi_pixelcam.model.checkpoint import CheckpointMeta
from wsi_pixelcam.model.device import resolve_device
from wsi_pixelcam.progress import ProgressFn
from wsi_pixelcam.store.heatmap_store import Heatmap, HeatmapStore, open_heatmap
from wsi_pixelcam.store.lock import StoreLock
from wsi_pixelcam.store.outdir import ensure_writable_dir
from wsi_pixelcam.store.patch_store import (
    TMP_MARK,
    is_patch_store,
    open_patch_store,
    remove_stale_temporaries,
    replace_dir,
)
from wsi_pixelcam.tiling import tile_slide

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferResult:
    """What happened to one slide; small enough to cross process boundaries."""

    slide_id: str
    out_dir: str
    status: str  # "ok" or "skipped"
    n_patches: int
    n_rois: int
    roi_area_um2: float
    threshold: float
    predicted_class: str
    class_probs: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""


def infer_slide(
    source: str | Path,
    model: InferenceModel,
    cfg: InferConfig,
    out_dir: str | Path,
    *,
    slide_id: str | None = None,
    keep_store: bool = False,
    stores_dir: str | Path | None = None,
    mpp_override: float | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> InferResult:
    """Run inference for one slide file or patch store into ``out_dir/<slide_id>/``.

    Outputs complete with the same parameters are skipped; outputs made with others are
    refused unless ``overwrite``. A slide file is streamed from the slide, unless
    ``keep_store`` (or a ``stores_dir``): then it is tiled into a patch store in
    ``stores_dir`` (default ``out_dir/stores``) first, as ``tile`` would, and the store is
    inferred. Raises a WsiPixelcamError subclass naming the file on bad input.
    """
    started = time.perf_counter()
    source, out_dir = Path(source), Path(out_dir)
    threshold, threshold_source = resolve_threshold(cfg, model.meta)
    roi_idx = roi_index(cfg, model.meta)
    ensure_writable_dir(out_dir)
    stores = Path(stores_dir) if stores_dir else out_dir / "stores" if keep_store else None
    tile_s = time.perf_counter()
    with _open_source(source, model.meta, cfg, stores, slide_id, mpp_override) as patches:
        tile_s = time.perf_counter() - tile_s
        slide_id = slide_id or patches.slide_id
        patches.check_fits(model.meta, cfg.mpp_tolerance)
        params = {
            **cfg.output_params(),
            "threshold": threshold,
            "roi_class": model.meta.class_names[roi_idx],
            "model_fingerprint": model.fingerprint(),
            "store": patches.identity(),
        }
        final = out_dir / slide_id
        finished = _finished_result(final, params, overwrite, started)
        if finished is not None:
            return finished
        with StoreLock(final):
            # another run may have finished this slide between the check above and the lock
            finished = _finished_result(final, params, overwrite, started)
            if finished is not None:
                return finished
            remove_stale_temporaries(final)
            tmp = final.with_name(f"{final.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
            try:
                tmp.mkdir()
                summary = _infer_into(
                    tmp, patches, model, cfg, slide_id, params, threshold_source, roi_idx,
                    progress,
                )  # fmt: skip
                summary["timings_s"]["tile"] = round(tile_s, 3)
                summary["timings_s"]["total"] = round(time.perf_counter() - started, 3)
                summary["source"]["input"] = str(source)
                outputs.write_json(tmp / outputs.SUMMARY, summary)
                replace_dir(tmp, final)
            except OSError as exc:
                if isinstance(exc, (OutputError, StoreError)):
                    raise
                raise OutputError(
                    f"{final}: writing the outputs failed ({exc.strerror or exc}); "
                    "nothing was marked complete: free space or fix permissions and run again"
                ) from exc
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return _result_from_summary(summary, str(final), time.perf_counter() - started, "ok")


def _finished_result(
    final: Path, params: dict[str, Any], overwrite: bool, started: float
) -> InferResult | None:
    """A "skipped" result when ``final`` is complete with ``params``; None when work is due.

    Raises OutputError for outputs made with other parameters, unless ``overwrite``.
    """
    done = outputs.read_complete_summary(final) if final.exists() else None
    if done is None:
        return None
    changed = outputs.changed_params(done["params"], params)
    if not changed:
        return _result_from_summary(done, str(final), time.perf_counter() - started)
    if not overwrite:
        raise OutputError(
            f"{final}: already inferred with other parameters ({', '.join(changed)} differ); "
            "pass --overwrite to replace it"
        )
    return None


def _open_source(
    source: Path,
    meta: CheckpointMeta,
    cfg: InferConfig,
    stores_dir: Path | None,
    slide_id: str | None,
    mpp_override: float | None,
) -> AbstractContextManager[PatchSource]:
    """A patch store as it is; a slide file streamed, or tiled into ``stores_dir`` first."""
    if source.suffix == ".zarr" or is_patch_store(source):
        return nullcontext(StoreSource(open_patch_store(source)))
    tiling = tile_config(cfg, meta)
    if tiling.read_threads is None:  # sized here, on the machine that runs the slide
        threads = stream_read_threads(resolve_device(cfg.device).type)
        tiling = tiling.model_copy(update={"read_threads": threads})
    if stores_dir is None:
        logger.info("%s: streamed, patches cut by %d threads", source, tiling.read_threads)
        return SlideStream(source, tiling, slide_id, mpp_override)
    result = tile_slide(source, tiling, stores_dir, slide_id=slide_id, mpp_override=mpp_override)
    logger.info("%s: %s patch store %s", source, result.status, result.store_path)
    return nullcontext(StoreSource(open_patch_store(result.store_path)))


def _geometry(patches: PatchSource, cfg: InferConfig) -> SourceGeometry:
    """The patches' geometry; ConfigError when the heatmap would be finer than the patches."""
    placed = patches.geometry()
    if cfg.output_mpp < placed.patch_mpp * (1 - 1e-6):
        raise ConfigError(
            f"output_mpp {cfg.output_mpp} is finer than the patches ({placed.patch_mpp:.4g} "
            "um/px); the heatmap cannot be sharper than its input: raise output_mpp"
        )
    return placed


def _frame_offset(geometry: SourceGeometry, cfg: InferConfig) -> tuple[float, float]:
    """What the GeoJSON subtracts from level-0 coordinates: QuPath's origin, or nothing."""
    if cfg.frame != "qupath":
        return (0.0, 0.0)
    return (float(geometry.bounds[0]), float(geometry.bounds[1]))


@dataclass(frozen=True)
class _Predictions:
    """Per-patch values (NaN where the model gave non-finite output) and the stitched maps."""

    probs: np.ndarray  # (N, K)
    fg_mean: np.ndarray  # (N,)
    fg_max: np.ndarray  # (N,)
    heatmap: Heatmap
    n_predicted: int
    n_nonfinite: int


def _infer_into(
    tmp: Path,
    patches: PatchSource,
    model: InferenceModel,
    cfg: InferConfig,
    slide_id: str,
    params: dict[str, Any],
    threshold_source: str,
    roi_index: int,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    """Write every output but the summary into ``tmp``; return the summary."""
    geometry = _geometry(patches, cfg)
    class_names = model.meta.class_names
    channels = ["foreground"] + ([f"cam:{class_names[roi_index]}"] if cfg.teacher_cam else [])
    class_channels = [f"prob:{c}" for c in class_names]
    timings: dict[str, float] = {}
    # a streamed slide's tissue QC files need only its plan: a thread writes them while the
    # patches are predicted (the pool is joined before any error leaves, so ``tmp`` is free)
    with ThreadPoolExecutor(1, thread_name_prefix="wsi-qc") as qc_pool:
        qc_written = qc_pool.submit(patches.write_qc, tmp)
        predicted = _predict_and_stitch(
            tmp, patches, model, cfg, geometry, channels, class_channels,
            {"slide_id": slide_id, "model": model.name, **params}, roi_index, progress, timings,
        )  # fmt: skip
        t0 = time.perf_counter()
        outputs.write_overlay(
            tmp / "overlay.png", patches.thumbnail(), predicted.heatmap, geometry.width0,
            geometry.height0, cfg.overlay_alpha,
        )  # fmt: skip
        qc_dir = qc_written.result()
    timings["overlay"] = time.perf_counter() - t0
    rois, message, tiles_name = _write_vectors(
        tmp, patches, model, cfg, geometry, predicted, slide_id, float(params["threshold"]),
        roi_index, timings,
    )  # fmt: skip
    return {
        "schema": outputs.SUMMARY_SCHEMA,
        "schema_version": outputs.SUMMARY_VERSION,
        "slide_id": slide_id,
        "message": message,
        "source": {
            **patches.describe(),
            "n_patches": predicted.n_predicted,
            "n_nonfinite_patches": predicted.n_nonfinite,
        },
        "model": {
            "name": model.name,
            "fingerprint": params["model_fingerprint"],
            "class_names": list(class_names),
            "mpp": model.meta.mpp,
            "patch_px": model.meta.patch_px,
        },
        "prediction": outputs.slide_prediction(predicted.probs, patches.tissue_frac, class_names),
        "rois": {
            "count": len(rois),
            "total_area_um2": float(sum(r.area_um2 for r in rois)),
            "class": class_names[roi_index],
            "threshold": float(params["threshold"]),
            "threshold_source": threshold_source,
            "frame": _frame_text(cfg),
        },
        "heatmap": {
            "mpp": cfg.output_mpp,
            "shape_hw": list(predicted.heatmap.levels[0].shape[1:]),
            "levels": len(predicted.heatmap.levels),
            "channels": channels,
            "window": cfg.window,
            "class_probs_mpp": geometry.stride_level0 * geometry.mpp0,
            "class_probs_channels": class_channels,
        },
        "files": {
            "heatmap": "heatmap.zarr",
            "class_probs": "class_probs.zarr",
            "overlay": "overlay.png",
            "rois": "rois.geojson",
            "tiles": tiles_name,
            "qc": qc_dir,
        },
        "params": params,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": True,
    }


def _predict_and_stitch(
    tmp: Path,
    patches: PatchSource,
    model: InferenceModel,
    cfg: InferConfig,
    geometry: SourceGeometry,
    channels: list[str],
    class_channels: list[str],
    provenance: dict[str, Any],
    roi_index: int,
    progress: ProgressFn | None,
    timings: dict[str, float],
) -> _Predictions:
    """Predict every patch; stitch foreground maps (and CAMs) and class probabilities into
    heatmaps in background threads while the model runs."""
    n = len(patches)
    fg_stitcher = _stitcher(
        tmp / "heatmap.zarr", geometry, cfg.output_mpp / geometry.mpp0, channels, provenance, cfg
    )
    # class probabilities are one value per patch: one heatmap pixel per grid stride
    class_stitcher = _stitcher(
        tmp / "class_probs.zarr", geometry, geometry.stride_level0, class_channels, provenance,
        cfg,
    )  # fmt: skip
    coords = patches.coords
    fg_stitcher.expect(coords)  # heatmap chunks are finished as their last patch comes in
    class_stitcher.expect(coords)
    probs = np.full((n, len(model.meta.class_names)), np.nan, np.float32)
    fg_mean = np.full(n, np.nan, np.float32)
    fg_max = np.full(n, np.nan, np.float32)
    n_predicted = 0
    t_predict = time.perf_counter()
    with StitchQueue(fg_stitcher) as fg_queue, StitchQueue(class_stitcher) as class_queue:
        # the device is this slide's until its last batch; the rest overlaps the next slide
        with device_turn(str(resolve_device(cfg.device))):
            for batch in predict_source(patches, model, cfg, cam_class=roi_index):
                rows = batch.rows
                ok = np.isfinite(batch.class_probs).all(axis=1)
                ok &= np.isfinite(batch.fg_maps).all(axis=(1, 2))
                ok &= np.isfinite(batch.cams).all(axis=(1, 2))
                probs[rows[ok]] = batch.class_probs[ok]
                fg_mean[rows[ok]] = batch.fg_maps[ok].mean(axis=(1, 2))
                fg_max[rows[ok]] = batch.fg_maps[ok].max(axis=(1, 2))
                maps = batch.fg_maps[:, None]
                if cfg.teacher_cam:
                    maps = np.concatenate([maps, batch.cams[:, None]], axis=1)
                fg_queue.put(maps[ok], coords[rows[ok]])
                class_queue.put(batch.class_probs[ok][:, :, None, None], coords[rows[ok]])
                n_predicted += len(rows)
                if progress is not None:
                    progress(n_predicted, n)
        timings["predict"] = time.perf_counter() - t_predict
    timings["stitch_tail"] = time.perf_counter() - t_predict - timings["predict"]
    timings["stitch_busy"] = fg_queue.busy_s + class_queue.busy_s
    n_bad = n_predicted - int(np.isfinite(probs).all(axis=1).sum())
    if n_bad == n_predicted:
        raise ModelError(
            f"{patches.where}: the model predicted NaN or infinity for all {n_predicted} "
            "patches; the "
            "checkpoint's weights are broken (diverged training?)"
            + ("; or float16 overflowed: try amp: false" if cfg.amp else "")
        )
    if n_bad:
        logger.warning(
            "%s: %d of %d patches predicted non-finite; left out", patches.where, n_bad, n_predicted
        )
    t0 = time.perf_counter()
    heatmap = open_heatmap(fg_stitcher.finish())
    class_stitcher.finish()
    timings["finalize"] = time.perf_counter() - t0
    return _Predictions(probs, fg_mean, fg_max, heatmap, n_predicted, n_bad)


def _write_vectors(
    tmp: Path,
    patches: PatchSource,
    model: InferenceModel,
    cfg: InferConfig,
    geometry: SourceGeometry,
    predicted: _Predictions,
    slide_id: str,
    threshold: float,
    roi_index: int,
    timings: dict[str, float],
) -> tuple[list[Roi], str, str | None]:
    """Trace ROIs from the heatmap into ``rois.geojson`` and, if asked, the per-patch
    ``tiles.geojson``; return the ROIs, the message and the tiles file's name."""
    t0 = time.perf_counter()
    rois = extract_rois(
        predicted.heatmap,
        threshold,
        frame_offset_level0=_frame_offset(geometry, cfg),
        min_area_um2=cfg.min_area_um2,
        min_hole_um2=cfg.min_hole_um2,
        simplify_um=cfg.simplify_um,
    )
    timings["rois"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    class_names = model.meta.class_names
    metadata = {
        "model": model.name,
        "threshold": f"{threshold:g}",
        "frame": _frame_text(cfg),
        "mpp": f"{cfg.output_mpp:g}",
        "slide_id": slide_id,
    }
    write_geojson(
        tmp / "rois.geojson", outputs.roi_features(rois, class_names[roi_index], metadata)
    )
    message = f"{len(rois)} ROI(s) at threshold {threshold:g}"
    if not rois:
        message = f"no foreground at threshold {threshold:g}: rois.geojson has no features"
        logger.info("%s: %s", slide_id, message)
    tiles_name = None
    if cfg.write_tiles:
        tiles = outputs.tile_features(
            patches.coords, geometry.patch_level0, predicted.probs, predicted.fg_mean,
            predicted.fg_max, patches.tissue_frac, class_names=class_names, roi_index=roi_index,
            frame_offset_level0=_frame_offset(geometry, cfg),
        )  # fmt: skip
        tiles_path = write_geojson(
            tmp / "tiles.geojson", tiles, gzip=len(tiles) > cfg.tiles_gzip_over
        )
        tiles_name = tiles_path.name
    timings["geojson"] = time.perf_counter() - t0
    return rois, message, tiles_name


def _frame_text(cfg: InferConfig) -> str:
    return "qupath (level-0 minus bounds offset)" if cfg.frame == "qupath" else "level0"


def _stitcher(
    path: Path,
    geometry: SourceGeometry,
    level0_per_px: float,
    channels: list[str],
    provenance: dict[str, Any],
    cfg: InferConfig,
) -> Stitcher:
    """A stitcher into a new heatmap over the whole slide at ``level0_per_px``."""
    store = HeatmapStore.create(
        path,
        (math.ceil(geometry.height0 / level0_per_px), math.ceil(geometry.width0 / level0_per_px)),
        level0_per_px * geometry.mpp0,
        level0_per_px=level0_per_px,
        frame_offset_level0=(float(geometry.bounds[0]), float(geometry.bounds[1])),
        chunk_px=cfg.chunk_px,
        n_channels=len(channels),
        provenance={**provenance, "channels": channels},
    )
    return Stitcher(store, patch_level0_px=geometry.patch_level0, window=cfg.window)


def _result_from_summary(
    summary: dict[str, Any], out_dir: str, seconds: float, status: str = "skipped"
) -> InferResult:
    rois, prediction = summary["rois"], summary["prediction"]
    return InferResult(
        slide_id=summary["slide_id"],
        out_dir=out_dir,
        status=status,
        n_patches=int(summary["source"]["n_patches"]),
        n_rois=int(rois["count"]),
        roi_area_um2=float(rois["total_area_um2"]),
        threshold=float(rois["threshold"]),
        predicted_class=str(prediction["predicted_class"]),
        class_probs=dict(prediction["class_probs"]),
        seconds=seconds,
        message=summary["message"] if status == "ok" else "outputs complete, same parameters",
    )
