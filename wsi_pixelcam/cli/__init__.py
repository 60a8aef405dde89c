"""``wsi-pixelcam`` command line: the only place that prints or configures logging.

One module per command, each with ``register(subparsers)`` and ``run(args)``. Heavy imports
(dask, zarr, torch) happen inside ``run``, so ``--help`` and ``tile`` stay fast. User errors
print one line and exit non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from wsi_pixelcam.cli import demo, evaluate, geojson, infer, report, tile, train
from wsi_pixelcam.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    USAGE_ERRORS,
    add_version,
    setup_logging,
)
from wsi_pixelcam.errors import WsiPixelcamError

COMMANDS = (demo, tile, train, infer, evaluate, geojson, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-pixelcam",
        description="Whole-slide images to PixelCAM region-of-interest maps for QuPath.",
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    try:
        return int(args.handler(args))
    except WsiPixelcamError as exc:
        if args.debug:
            raise
        print(f"wsi-pixelcam: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, USAGE_ERRORS) else EXIT_FAILED
    except KeyboardInterrupt:
        print("wsi-pixelcam: interrupted; re-run the same command to finish", file=sys.stderr)
        return 130


def _one_line(exc: WsiPixelcamError) -> str:
    """The error's message; one raised in a DataLoader worker comes back with the worker's
    traceback appended, whose last line ("module.Class: message") holds the original."""
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[-1]
