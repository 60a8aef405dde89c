"""Cohort recipes: tile a cohort, train on it, infer it, on a dask cluster.

    python pipelines/cohort.py tile  --slides DIR        --out RUN [--annotations DIR]
    python pipelines/cohort.py train --manifest M.csv    --out RUN [--train-config Y]
    python pipelines/cohort.py infer --slides DIR        --out RUN --model RUN/model/...pt
    python pipelines/cohort.py all   --manifest M.csv    --out RUN      # tile, train, infer, report

Every recipe takes --scheduler (an address like tcp://host:8786 or a scheduler JSON file;
default: a LocalCluster of --workers processes), writes per-slide status tables
(RUN/tile_status.csv, RUN/infer/infer_status.csv) and RUN/run_manifest.json: the command,
inputs, configs, package versions, timings and outcome counts of every step, appended run
after run. Re-running skips finished slides and finished training stages.

Layout of RUN: stores/ (patch stores, QC), model/ (checkpoints, metrics.jsonl), infer/
(one folder per slide: heatmap.zarr, overlay.png, rois.geojson, tiles.geojson, summary.json),
report/ (after ``all``: the static HTML report, RUN/report/index.html).

On SLURM or PBS, start the cluster with dask-jobqueue and pass its address, e.g.

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=8, memory="32GB", processes=4, walltime="04:00:00")
    cluster.scale(jobs=10)
    print(cluster.scheduler_address)      # -> --scheduler tcp://...

or run `dask scheduler --scheduler-file sched.json` and `dask worker --scheduler-file
sched.json` in batch jobs and pass `--scheduler sched.json`. Workers need the package
installed and the slide paths visible at the same paths (a shared filesystem).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wsi_pixelcam import __version__
from wsi_pixelcam.atomic_write import replaced_when_done
from wsi_pixelcam.cli import main as cli_main


def _cluster_args(args: argparse.Namespace) -> list[str]:
    out = ["--workers", str(args.workers)]
    if args.scheduler:
        out += ["--scheduler", args.scheduler]
    return out


def _inputs(args: argparse.Namespace) -> list[str]:
    if args.manifest:
        return ["--manifest", str(args.manifest)]
    return [str(p) for p in args.slides]


def _status_counts(table: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if table.exists():
        with open(table, newline="") as handle:
            for row in csv.DictReader(handle):
                counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def _step(run: Path, name: str, argv: Sequence[str], status: Path | None) -> int:
    """Run one CLI step and append its record to RUN/run_manifest.json."""
    started = time.time()
    code = cli_main(list(argv))
    record: dict[str, Any] = {
        "step": name,
        "argv": ["wsi-pixelcam", *argv],
        "exit_code": code,
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
    }
    if status is not None:
        record["status_table"] = str(status)
        record["outcomes"] = _status_counts(status)
    path = run / "run_manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"steps": []}
    manifest.update({"package": f"wsi-pixelcam {__version__}", "python": sys.version.split()[0]})
    manifest["steps"].append(record)
    with replaced_when_done(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    return code


def tile(args: argparse.Namespace) -> int:
    argv = ["tile", *_inputs(args), "--out", str(args.out / "stores"), *_cluster_args(args)]
    if args.annotations:
        argv += ["--annotations", str(args.annotations)]
    if args.tile_config:
        argv += ["--config", str(args.tile_config)]
    if args.recursive:
        argv.append("--recursive")
    return _step(args.out, "tile", argv, args.out / "stores" / "tile_status.csv")


def train(args: argparse.Namespace) -> int:
    code = tile(args)
    stores = sorted(str(p) for p in (args.out / "stores").glob("*.zarr"))
    if not stores:
        print("cohort: no patch store was made; nothing to train on", file=sys.stderr)
        return code or 1
    argv = ["train", "--stores", *stores, "--out", str(args.out / "model")]
    if args.train_config:
        argv += ["--config", str(args.train_config)]
    return _step(args.out, "train", argv, None) or code


def infer(args: argparse.Namespace, inputs: Sequence[str] | None = None) -> int:
    model = args.model or _trained_model(args.out)
    argv = [
        "infer", *(inputs or _inputs(args)), "--model", str(model),
        "--out", str(args.out / "infer"), "--stores-dir", str(args.out / "stores"),
        *_cluster_args(args),
    ]  # fmt: skip
    if args.infer_config:
        argv += ["--config", str(args.infer_config)]
    return _step(args.out, "infer", argv, args.out / "infer" / "infer_status.csv")


def _trained_model(run: Path) -> Path:
    summary = run / "model" / "train_summary.json"
    if not summary.exists():
        raise SystemExit(f"cohort: {summary} not found; pass --model or run the train recipe")
    return Path(json.loads(summary.read_text())["model_path"])


def all_steps(args: argparse.Namespace) -> int:
    code = train(args)
    # infer the stores just made: same tiling as training, no second read of the slides
    stores = sorted(str(p) for p in (args.out / "stores").glob("*.zarr"))
    code = infer(args, stores) or code
    # the report shows whatever the steps left, failures included
    report = ["report", str(args.out), "--out", str(args.out / "report")]
    return _step(args.out, "report", report, None) or code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="recipe", required=True)
    for name, fn in (("tile", tile), ("train", train), ("infer", infer), ("all", all_steps)):
        p = sub.add_parser(name)
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--slides", nargs="+", type=Path, help="slide files or directories")
        source.add_argument("--manifest", type=Path, help="CSV: path[,slide_id,mpp,label,...]")
        p.add_argument("--out", type=Path, required=True, help="run directory")
        p.add_argument("--recursive", action="store_true")
        p.add_argument("--annotations", type=Path, help="directory of <slide_id>.geojson")
        p.add_argument("--tile-config", type=Path)
        p.add_argument("--train-config", type=Path)
        p.add_argument("--infer-config", type=Path)
        p.add_argument("--model", type=Path, help="checkpoint for infer (default: RUN's)")
        p.add_argument("--scheduler", help="dask scheduler address or scheduler file")
        p.add_argument("--workers", type=int, default=2, help="LocalCluster processes")
        p.set_defaults(fn=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
