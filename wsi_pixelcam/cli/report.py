"""``wsi-pixelcam report``: a static HTML report of cohort runs, for a browser and a zip."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_pixelcam.cli.common import EXIT_OK, add_common


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report",
        help="write a static HTML report of run or output directories",
        description="Collect the tiling, training, inference and evaluation outputs found in "
        "the given directories (a cohort run, a demo output, an infer --out or train --out "
        "directory) into a self-contained HTML report: an index of slides, a page per slide "
        "and a training page. Missing or failed outputs are shown as such.",
    )
    report.add_argument("runs", nargs="+", type=Path, help="run or output directories")
    report.add_argument("--out", type=Path, required=True, help="report directory")
    add_common(report)
    report.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from wsi_pixelcam.report.build import build_report

    result = build_report(args.runs, args.out)
    print(
        f"report of {result.n_slides} slide(s) ({result.n_failed} failed)"
        f"{', with training page' if result.has_model_page else ''}: {result.index}"
    )
    return EXIT_OK
