"""What every command shares: exit codes, logging, options, and the batch runner's report."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_pixelcam import __version__
from wsi_pixelcam.errors import ConfigError, ManifestError

if TYPE_CHECKING:
    from wsi_pixelcam.batch import SlideFn
    from wsi_pixelcam.jobs import SlideJob

log = logging.getLogger("wsi_pixelcam")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
USAGE_ERRORS = (ConfigError, ManifestError)


def add_common(parser: argparse.ArgumentParser) -> None:
    add_version(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version`` on the top-level parser and on every command (``tile --version`` too)."""
    parser.add_argument("--version", action="version", version=f"wsi-pixelcam {__version__}")


def add_batch_options(parser: argparse.ArgumentParser) -> None:
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
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="redo outputs made with other parameters (default: refuse)",
    )


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("wsi_pixelcam").setLevel(level)


def quiet_cluster_logs(debug: bool) -> None:
    """dask.distributed sets its loggers to INFO when imported; keep its chatter for --debug."""
    import distributed  # noqa: F401  (imported so its logging setup runs before ours)

    for noisy in ("distributed", "tornado", "bokeh"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)


def collect_jobs(
    args: argparse.Namespace, inputs: Sequence[Path], *, stores: bool = False
) -> list[SlideJob]:
    """Jobs from ``--manifest`` or from files/directories, with ``--annotations`` attached."""
    from dataclasses import replace

    from wsi_pixelcam.jobs import discover_slides, jobs_from_manifest, jobs_from_paths

    annotations = getattr(args, "annotations", None)
    annotations_dir = annotations if annotations and annotations.is_dir() else None
    if args.manifest:
        jobs = jobs_from_manifest(args.manifest, annotations_dir)
    elif inputs:
        paths = discover_slides(inputs, args.recursive, stores=stores)
        if not paths:
            raise ManifestError(f"no slides found in {', '.join(map(str, inputs))}")
        jobs = jobs_from_paths(paths, annotations_dir)
    else:
        raise ManifestError("give slide files or directories, or --manifest")
    if annotations and annotations_dir is None:
        if len(jobs) != 1:
            raise ManifestError(
                f"{annotations}: one annotation file needs exactly one slide; "
                "pass a directory of <slide_id>.geojson files instead"
            )
        jobs = [replace(jobs[0], annotations=str(annotations))]
    return jobs


def run_and_report(
    name: str, fn: SlideFn, jobs: Sequence[SlideJob], args: argparse.Namespace
) -> int:
    """Run ``fn`` over ``jobs`` on dask, write OUT/<name>_status.csv, print one line per failure.

    One ``name`` run at a time per output directory (OUT/<name>_status.lock): a second one
    fails at once instead of overwriting the first one's status table with its own.
    """
    from wsi_pixelcam.batch import run_batch, write_status_table
    from wsi_pixelcam.cli.progress import SlideBars
    from wsi_pixelcam.store.lock import StoreLock
    from wsi_pixelcam.store.outdir import ensure_writable_dir

    ensure_writable_dir(args.out)
    with StoreLock(args.out / f"{name}_status", what=f"{name} outputs to {args.out}"):
        quiet_cluster_logs(args.debug)
        log.info("%s: %d slide(s) -> %s", name, len(jobs), args.out)
        with SlideBars(len(jobs), disable=args.quiet) as bars:
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


def add_config_options(
    parser: argparse.ArgumentParser, example: str, set_example: str = "optim.base_lr=0.01"
) -> None:
    parser.add_argument("--config", type=Path, help=f"YAML config (see {example})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config value, e.g. --set {set_example} (repeatable)",
    )


def parse_overrides(pairs: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings to dotted overrides; values are read as YAML scalars."""
    import yaml

    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides
