"""``wsi-pixelcam infer``: slides or patch stores to heatmaps and QuPath ROIs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_pixelcam.cli.common import (
    add_batch_options,
    add_common,
    add_config_options,
    collect_jobs,
    parse_overrides,
    run_and_report,
)
from wsi_pixelcam.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from wsi_pixelcam.config import InferConfig


def register(sub: argparse._SubParsersAction) -> None:
    infer = sub.add_parser(
        "infer",
        help="predict, stitch heatmaps and write QuPath GeoJSON ROIs for slides or stores",
        description="Slides are cut into patches with the checkpoint's resolution and patch size "
        "while the model runs (--keep-store: tiled into a patch store first). Each slide gets "
        "OUT/<slide_id>/ with heatmap.zarr, overlay.png, rois.geojson, "
        "tiles.geojson and summary.json.",
    )
    infer.add_argument("inputs", nargs="*", type=Path, help="slides, stores or directories")
    infer.add_argument("--model", type=Path, required=True, help="PixelCAM checkpoint (.pt)")
    infer.add_argument("--out", type=Path, required=True, help="output directory")
    infer.add_argument(
        "--keep-store",
        action="store_true",
        help="tile slides into patch stores first and infer those (default: stream from the slide)",
    )
    infer.add_argument(
        "--stores-dir", type=Path, help="where --keep-store tiles slides (OUT/stores); implies it"
    )
    add_config_options(infer, "configs/infer.yaml", "min_area_um2=5000")
    infer.add_argument("--threshold", type=float, help="ROI threshold in [0, 1]")
    infer.add_argument("--output-mpp", type=float, help="heatmap resolution (default 2 um/px)")
    infer.add_argument("--device", help="auto, cpu, cuda[:N]")
    infer.add_argument("--mpp", type=float, help="level-0 microns per pixel of the slides")
    add_batch_options(infer)
    add_common(infer)
    infer.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from functools import partial

    from wsi_pixelcam.config import InferConfig, load_config
    from wsi_pixelcam.jobs import infer_job

    cfg = load_config(
        InferConfig,
        args.config,
        {
            "threshold": args.threshold,
            "output_mpp": args.output_mpp,
            "device": args.device,
            **parse_overrides(args.overrides),
        },
    )
    _check_model(args.model, cfg)
    jobs = collect_jobs(args, args.inputs, stores=True)
    fn = partial(
        infer_job,
        cfg=cfg,
        model_path=str(args.model.resolve()),
        out_dir=str(args.out),
        overwrite=args.overwrite,
        keep_store=args.keep_store,
        stores_dir=str(args.stores_dir) if args.stores_dir else None,
        mpp_override=args.mpp,
    )
    return run_and_report("infer", fn, jobs, args)


def _check_model(path: Path, cfg: InferConfig) -> None:
    """Read ``path``'s metadata once and check it against ``cfg``, before any slide is sent.

    A file that is no checkpoint, or a threshold, ROI class or tiling it cannot serve, is one
    error naming the file, not one failure per slide from inside every worker.
    """
    from wsi_pixelcam.inference.settings import resolve_threshold, roi_index, tile_config
    from wsi_pixelcam.model.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(path)
    try:
        resolve_threshold(cfg, meta)
        roi_index(cfg, meta)
        tile_config(cfg, meta)
    except (CheckpointError, ConfigError) as exc:
        raise type(exc)(f"{path}: {exc}") from exc
