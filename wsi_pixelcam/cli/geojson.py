"""``wsi-pixelcam validate-geojson``: check files against QuPath's import rules."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_pixelcam.cli.common import EXIT_OK, add_common


def register(sub: argparse._SubParsersAction) -> None:
    validate = sub.add_parser(
        "validate-geojson",
        help="check a GeoJSON file against QuPath's rules",
        description="Exit non-zero naming the first feature that breaks a QuPath import rule.",
    )
    validate.add_argument("files", nargs="+", type=Path)
    add_common(validate)
    validate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from wsi_pixelcam.geo.qupath_rules import validate_geojson_file

    for path in args.files:
        validate_geojson_file(path)
        print(f"{path}: valid for QuPath")
    return EXIT_OK
