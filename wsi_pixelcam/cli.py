"""``wsi-pixelcam`` command line: the only place that prints or configures logging.

Heavy imports (dask, zarr, torch) happen inside the command that needs them, so ``--help``
and ``tile`` stay fast. User errors print one line and exit non-zero; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_pixelcam import __version__
from wsi_pixelcam.errors import ConfigError, ManifestError, WsiPixelcamError

if TYPE_CHECKING:
    from wsi_pixelcam.batch import SlideFn
    from wsi_pixelcam.jobs import SlideJob

log = logging.getLogger("wsi_pixelcam")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_USAGE_ERRORS = (ConfigError, ManifestError)


def bundled_example() -> Path:
    """The CC0 Aperio slide shipped with the package (CMU-1-Small-Region.svs)."""
    from importlib.resources import files

    return Path(str(files("wsi_pixelcam") / "examples" / "CMU-1-Small-Region.svs"))


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _add_batch_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("batch")
    group.add_argument(
        "--manifest",
        type=Path,
        help="CSV with a 'path' column (and optional slide_id, mpp, label, annotations)",
    )
    group.add_argument(
        "--recursive", action="store_true", help="search input directories recursively"
    )
    group.add_argument(
        "--workers", type=int, default=2, help="LocalCluster worker processes (default 2)"
    )
    group.add_argument("--scheduler", help="address or scheduler-file of an existing dask cluster")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-pixelcam",
        description="Whole-slide images to PixelCAM region-of-interest maps for QuPath.",
    )
    parser.add_argument("--version", action="version", version=f"wsi-pixelcam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    tile.add_argument("--config", type=Path, help="YAML tile config (see configs/tile.yaml)")
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
        help="directory of <slide_id>.geojson QuPath "
        "annotations (or one file for a single slide) to label patches",
    )
    tile.add_argument("--labels-csv", type=Path, help="CSV of slide,x,y,label points")
    tile.add_argument(
        "--overwrite",
        action="store_true",
        help="re-tile stores made with other parameters (default: refuse)",
    )
    _add_batch_options(tile)
    _add_common(tile)
    tile.set_defaults(handler=_cmd_tile)

    validate = sub.add_parser(
        "validate-geojson", help="check a GeoJSON file against QuPath's rules"
    )
    validate.add_argument("files", nargs="+", type=Path)
    _add_common(validate)
    validate.set_defaults(handler=_cmd_validate_geojson)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("wsi_pixelcam").setLevel(level)


def _quiet_cluster_logs(debug: bool) -> None:
    """dask.distributed sets its loggers to INFO when imported; keep its chatter for --debug."""
    import distributed  # noqa: F401  (imported so its logging setup runs before ours)

    for noisy in ("distributed", "tornado", "bokeh"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)


def _cmd_tile(args: argparse.Namespace) -> int:
    from functools import partial

    from wsi_pixelcam.config import TileConfig, load_config
    from wsi_pixelcam.jobs import discover_slides, jobs_from_manifest, jobs_from_paths, tile_job
    from wsi_pixelcam.labels import read_label_csv

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
        },
    )
    inputs = list(args.inputs) + ([bundled_example()] if args.example else [])
    annotations_dir = args.annotations if args.annotations and args.annotations.is_dir() else None
    if args.manifest:
        jobs = jobs_from_manifest(args.manifest, annotations_dir)
    elif inputs:
        paths = discover_slides(inputs, args.recursive)
        if not paths:
            raise ManifestError(f"no slides found in {', '.join(map(str, inputs))}")
        jobs = jobs_from_paths(paths, annotations_dir)
    else:
        raise ManifestError("give slide files or directories, --manifest, or --example")
    if args.annotations and annotations_dir is None:
        if len(jobs) != 1:
            raise ManifestError(
                f"{args.annotations}: one annotation file needs exactly one slide; "
                "pass a directory of <slide_id>.geojson files instead"
            )
        jobs = [
            jobs[0].__class__(
                jobs[0].path, jobs[0].slide_id, jobs[0].mpp, jobs[0].label, str(args.annotations)
            )
        ]
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
    return _run_and_report("tile", fn, jobs, args)


def _run_and_report(
    name: str, fn: SlideFn, jobs: Sequence[SlideJob], args: argparse.Namespace
) -> int:
    from wsi_pixelcam.batch import write_status_table
    from wsi_pixelcam.cli_progress import SlideBars
    from wsi_pixelcam.store.outdir import ensure_writable_dir

    ensure_writable_dir(args.out)
    _quiet_cluster_logs(args.debug)
    log.info("%s: %d slide(s) -> %s", name, len(jobs), args.out)
    with SlideBars(len(jobs), disable=args.quiet) as bars:
        from wsi_pixelcam.batch import run_batch

        outcomes = run_batch(
            fn, jobs, scheduler=args.scheduler, workers=args.workers, progress=bars.callbacks()
        )
    table = write_status_table(args.out, name, outcomes)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")}
    for outcome in outcomes:
        if outcome.status == "skipped":
            log.info("skipped %s: %s", outcome.slide_id, outcome.message)
        elif outcome.status == "failed":
            print(f"wsi-pixelcam: {outcome.slide_id} failed: {outcome.message}", file=sys.stderr)
            if args.debug and outcome.traceback:
                print(outcome.traceback, file=sys.stderr)
    print(
        f"{len(outcomes)} slide(s): {counts['ok']} ok, {counts['skipped']} skipped, "
        f"{counts['failed']} failed; status table: {table}"
    )
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def _cmd_validate_geojson(args: argparse.Namespace) -> int:
    from wsi_pixelcam.geo.geojson import validate_geojson_file

    for path in args.files:
        validate_geojson_file(path)
        print(f"{path}: valid for QuPath")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return int(args.handler(args))
    except WsiPixelcamError as exc:
        if args.debug:
            raise
        print(f"wsi-pixelcam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, _USAGE_ERRORS) else EXIT_FAILED
    except KeyboardInterrupt:
        print("wsi-pixelcam: interrupted; re-run the same command to finish", file=sys.stderr)
        return 130
