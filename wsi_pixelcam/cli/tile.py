"""``wsi-pixelcam tile``: slides to patch stores."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_pixelcam.cli.common import (
    add_batch_options,
    add_common,
    add_config_options,
    collect_jobs,
    parse_overrides,
    run_and_report,
)


def register(sub: argparse._SubParsersAction) -> None:
    tile = sub.add_parser(
        "tile",
        help="find tissue and cut patches into one zarr store per slide",
        description="Tile slides into patch stores (OUT/<slide_id>.zarr).",
    )
    tile.add_argument("inputs", nargs="*", type=Path, help="slide files and/or directories")
    tile.add_argument(
        "--example", action="store_true", help="tile the bundled CMU-1-Small-Region.svs"
    )
    tile.add_argument("--out", type=Path, required=True, help="output directory")
    add_config_options(tile, "configs/tile.yaml", "tissue.min_saturation=0.1")
    tile.add_argument(
        "--mpp", type=float, help="level-0 microns per pixel, overriding the metadata"
    )
    tile.add_argument("--target-mpp", type=float, help="patch resolution in um/px (default 0.5)")
    tile.add_argument("--patch-px", type=int, help="patch size in target pixels (default 256)")
    tile.add_argument(
        "--stride-px", type=int, help="grid stride in target pixels (default patch-px)"
    )
    tile.add_argument("--min-tissue-frac", type=float, help="minimum tissue fraction (default 0.5)")
    tile.add_argument("--backend", choices=("auto", "tiffslide", "openslide"))
    tile.add_argument(
        "--jpeg-quality", type=int, help="JPEG quality of stored patches (default 80)"
    )
    tile.add_argument("--lossless", action="store_true", help="store patches losslessly (zstd)")
    tile.add_argument(
        "--annotations",
        type=Path,
        help="directory of <slide_id>.geojson QuPath annotations "
        "(or one file for a single slide) to label patches",
    )
    tile.add_argument("--labels-csv", type=Path, help="CSV of slide,x,y,label points")
    add_batch_options(tile)
    add_common(tile)
    tile.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from functools import partial

    from wsi_pixelcam.config import TileConfig, load_config
    from wsi_pixelcam.examples import bundled_example
    from wsi_pixelcam.jobs import tile_job
    from wsi_pixelcam.labels import read_label_csv
    from wsi_pixelcam.slide import check_mpp_value

    cfg = load_config(
        TileConfig,
        args.config,
        {
            "target_mpp": args.target_mpp,
            "patch_px": args.patch_px,
            "stride_px": args.stride_px,
            "min_tissue_frac": args.min_tissue_frac,
            "backend": args.backend,
            "store.jpeg_quality": args.jpeg_quality,
            "store.compression": "lossless" if args.lossless else None,
            **parse_overrides(args.overrides),
        },
    )
    if args.mpp is not None:
        check_mpp_value(args.mpp, "--mpp")  # once, not once per slide
    inputs = list(args.inputs) + ([bundled_example()] if args.example else [])
    jobs = collect_jobs(args, inputs)
    points = None
    if args.labels_csv:
        points = {k: tuple(v) for k, v in read_label_csv(args.labels_csv).items()}
    fn = partial(
        tile_job,
        cfg=cfg,
        out_dir=str(args.out),
        overwrite=args.overwrite,
        mpp_override=args.mpp,
        label_points=points,
    )
    return run_and_report("tile", fn, jobs, args)
