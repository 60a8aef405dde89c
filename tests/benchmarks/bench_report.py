"""Report build and index opening time for a large cohort (on demand, not a test).

    python tests/benchmarks/bench_report.py --out /tmp/bench_report [--slides 1000] [--json F]

Writes ``--slides`` inference summaries (no slides, no pictures: the numbers only, in the
current ``summary.json`` schema, 2% of slides failed in ``infer_status.json``), times
``build_report`` on them and, where playwright and a Chromium executable are installed, the
index's opening in headless Chromium (navigation start to the load event; target < 2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from wsi_pixelcam.batch import SlideOutcome, write_status_table
from wsi_pixelcam.inference import outputs
from wsi_pixelcam.report.build import build_report

CLASSES = ("normal", "tumor")


def write_summaries(infer: Path, n: int, seed: int = 0) -> None:
    """``n`` slide output folders holding a summary.json each, and a status table."""
    rng = np.random.default_rng(seed)
    outcomes = []
    for i in range(n):
        slide_id = f"slide-{i:05d}"
        if i % 50 == 49:
            outcomes.append(
                SlideOutcome(slide_id, f"/slides/{slide_id}.svs", "failed", 1.0, "SlideReadError",
                             f"/slides/{slide_id}.svs: tile (3, 7) cannot be decoded")
            )  # fmt: skip
            continue
        tumor = float(rng.uniform())
        n_rois = int(rng.integers(0, 20))
        summary = {
            "schema": outputs.SUMMARY_SCHEMA,
            "schema_version": outputs.SUMMARY_VERSION,
            "slide_id": slide_id,
            "message": f"{n_rois} ROI(s) at threshold 0.5",
            "source": {"store": f"/run/stores/{slide_id}.zarr", "n_patches": 5000},
            "model": {"name": "best_loc.pt", "fingerprint": "0123456789abcdef"},
            "prediction": {
                "class_probs": {"normal": 1 - tumor, "tumor": tumor},
                "predicted_class": CLASSES[int(tumor > 0.5)],
            },
            "rois": {
                "count": n_rois,
                "total_area_um2": float(rng.uniform(0, 5e6)) if n_rois else 0.0,
                "class": "tumor",
                "threshold": 0.5,
                "threshold_source": "checkpoint",
                "frame": "qupath (level-0 minus bounds offset)",
            },
            "timings_s": {"predict": 30.0, "tile": 20.0, "total": 60.0},
            "complete": True,
        }
        (infer / slide_id).mkdir(parents=True)
        (infer / slide_id / outputs.SUMMARY).write_text(json.dumps(summary))
        outcomes.append(SlideOutcome(slide_id, f"/slides/{slide_id}.svs", "ok", 60.0))
    write_status_table(infer, "infer", outcomes)


def open_seconds(index: Path) -> float | None:
    """Navigation start to the load event of ``index`` in headless Chromium, if available."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    chromium = os.environ.get("WSI_PIXELCAM_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        return None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(index.as_uri(), wait_until="load")
        ms = page.evaluate(
            "() => { const n = performance.getEntriesByType('navigation')[0];"
            " return n.loadEventEnd - n.startTime; }"
        )
        browser.close()
    return float(ms) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slides", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    write_summaries(args.out / "infer", args.slides)
    started = time.perf_counter()
    result = build_report([args.out / "infer"], args.out / "report")
    build_s = time.perf_counter() - started
    opened = open_seconds(result.index)
    report = {
        "slides": args.slides,
        "build_s": round(build_s, 2),
        "index_kib": round(result.index.stat().st_size / 1024, 1),
        "open_s": None if opened is None else round(opened, 3),
    }
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
