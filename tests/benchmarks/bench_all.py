"""All benchmarks in one run: tiling, training, inference and stitching, as ratios to bounds.

Run on demand (not part of the test suite):

    python tests/benchmarks/bench_all.py --out /tmp/bench_all                  # GPU workstation
    python tests/benchmarks/bench_all.py --out /tmp/bench_all --quick          # ~5-8 min, 2 CPUs
    python tests/benchmarks/bench_all.py --out /tmp/ba --only tile,stitch --device cpu
    python tests/benchmarks/bench_all.py --out /tmp/ba --only infer,e2e --device cuda   # GPU check

Each benchmark runs as its own subprocess (``HF_HUB_OFFLINE=1``) with the sizes below
(``--quick`` shrinks them). Its raw JSON and log stay under ``--out`` (``tile.json``,
``train/bench_train.json``, ``infer.json``, ``e2e.json``, ``stitch.json``, ``<name>.log``); the
table is printed and written as ``bench_all.json`` and ``bench_all.md``. A benchmark that fails
gives one ``failed`` row with the last line of its stderr, the others still run, and the exit
status is 1. Targets missed are reported in the ``met`` column, not in the exit status.

Rows (ratio = value / bound; ``met`` is ``-`` where there is no target):
  tile    tiler patches/s vs tile-aligned direct reads (bench_tile ``direct``)   >= 0.80
  tile    tiler with 1 read thread vs the same direct reads                       report
  tile    tiler patches/s vs an openslide ``read_region`` loop (CLAM-style)       >= 3
  tile    patch store bytes vs the source JPEG tiles' bytes                       <= 1.0
  train   training loader patches/s vs the same batches in memory (best runs)    >= 0.90
  infer   ``predict_store`` patches/s vs the model on in-memory batches          >= 0.90
  infer   streaming (predict + background stitching) vs in-memory                report
  infer   whole ``infer_slide`` (also heatmap, overlay, ROIs, GeoJSON) vs memory  report
  e2e     slide file -> GeoJSON seconds: streaming ``infer SLIDE`` vs store-first  <= 1.0
  e2e     whole slide patches/s, streaming and store-first, vs the model alone     report
  e2e     streamed ROIs equal a lossless store's on the same grid (1 = yes)       >= 1
  stitch  per slide side: stitching + finalise + ROIs + GeoJSON seconds           report
  stitch  per slide side: peak RSS MiB vs 2 GiB                                   <= 1.0
  report  HTML report build seconds for 1,000 slide summaries                     report
  report  index opening in headless Chromium vs 2 s (where Chromium is installed)  <= 1.0
Throughputs are the best repeat of each mode. Quick sizes (16k px slide, 6 training steps,
512 inference patches, one or two repeats) are noisy, and the tiler's fixed start-up costs
weigh more on the smaller slide, so its ratio to direct reads comes out lower than at 20k px.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("tile", "train", "infer", "e2e", "stitch", "report")
COLUMNS = ("benchmark", "measure", "value", "bound", "ratio", "target", "met")
RSS_BOUND_MIB = 2048.0


@dataclass(frozen=True)
class Target:
    """A ratio must be ``>=`` or ``<=`` the threshold."""

    op: str
    threshold: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.threshold if self.op == ">=" else ratio <= self.threshold

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


AT_90 = Target(">=", 0.9)  # at most 10% slower than the bound
AT_MOST_1 = Target("<=", 1.0)


@dataclass(frozen=True)
class Row:
    """One measure of one benchmark, or (``error`` set) a benchmark that failed."""

    benchmark: str
    measure: str
    value: float | None = None
    unit: str = ""
    bound: float | None = None
    bound_name: str = ""
    target: Target | None = None
    error: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.bound is None:
            return None
        return self.value / self.bound

    @property
    def met(self) -> str:
        if self.error:
            return "no"
        if self.target is None or self.ratio is None:
            return "-"
        return "yes" if self.target.met(self.ratio) else "no"

    def cells(self) -> tuple[str, ...]:
        value = self.error or _number(self.value, self.unit)
        bound = "-" if self.bound is None else f"{self.bound:.1f} ({self.bound_name})"
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}"
        cells = (self.benchmark, self.measure, value, bound, ratio, str(self.target or "-"))
        return tuple(c.replace("|", "\\|") for c in (*cells, self.met))

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "measure": self.measure,
            "value": self.value,
            "unit": self.unit,
            "bound": self.bound,
            "bound_name": self.bound_name,
            "ratio": self.ratio,
            "target": None if self.target is None else str(self.target),
            "met": self.met,
            "error": self.error,
        }


def _number(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.1f} {unit}".strip()


# --- child JSON -> rows ---------------------------------------------------------------------


def _per_s(
    benchmark: str,
    measure: str,
    value: float,
    bound: float,
    bound_name: str,
    target: Target | None = None,
) -> Row:
    return Row(benchmark, measure, value, "patches/s", bound, bound_name, target)


def tile_rows(data: dict[str, Any]) -> list[Row]:
    """Rows from ``bench_tile.py --json``: {"stages": {name: {patches, seconds, ...}}, ...}."""
    stages = data["stages"]
    rate = {name: s["patches"] / s["seconds"] for name, s in stages.items()}
    tiler, direct = rate["tiler"], rate["direct"]
    rows = [
        _per_s("tile", "tiler", tiler, direct, "direct reads", Target(">=", 0.8)),
        _per_s("tile", "tiler, 1 read thread", rate["tiler-1t"], direct, "direct reads"),
        _per_s("tile", "tiler", tiler, rate["openslide"], "openslide loop", Target(">=", 3)),
    ]
    store_vs_source = data.get("ratios", {}).get("store bytes / source bytes")
    if store_vs_source:
        store_mb = stages["tiler"]["store_bytes"] / 1e6
        source_mb = store_mb / store_vs_source
        rows.append(
            Row("tile", "store bytes", store_mb, "MB", source_mb, "source tiles", AT_MOST_1)
        )
    return rows


def train_rows(data: dict[str, Any]) -> list[Row]:
    """Rows from ``bench_train.py``'s ``bench_train.json`` (best patches/s per mode)."""
    best = data["best_patches_per_s"]
    return [_per_s("train", "loader", best["loader"], best["memory"], "in-memory batches", AT_90)]


def infer_rows(data: dict[str, Any]) -> list[Row]:
    """Rows from ``bench_infer.py throughput --json``: the best of its ``runN`` entries."""
    runs = [v for k, v in data.items() if k.startswith("run")]
    best = {
        mode: max(r[f"{mode}_patches_per_s"] for r in runs)
        for mode in ("memory", "predict", "stream", "infer")
    }
    memory, model = best["memory"], "in-memory model"
    return [
        _per_s("infer", "predict_store", best["predict"], memory, model, AT_90),
        _per_s("infer", "streaming (predict + stitch)", best["stream"], memory, model),
        _per_s("infer", "infer_slide (whole)", best["infer"], memory, model),
    ]


def e2e_rows(data: dict[str, Any]) -> list[Row]:
    """Rows from ``bench_infer.py e2e --json``: one slide, three paths, one model rate."""
    runs, memory = data["runs"], data["memory_patches_per_s"]
    stream, store = runs["stream"], runs["store"]
    slide = f"{data['slide_px'] // 1000}k px slide, {data['n_patches']} patches"
    equal = float(data["rois_equal_lossless"])
    return [
        Row("e2e", f"{slide}: streaming to GeoJSON", stream["seconds"], "s", store["seconds"],
            "store-first, JPEG", AT_MOST_1),
        _per_s("e2e", "streaming, whole slide", stream["patches_per_s"], memory, "model alone"),
        _per_s("e2e", "store-first, whole slide", store["patches_per_s"], memory, "model alone"),
        Row("e2e", "ROIs equal a lossless store's", equal, "", 1.0, "equal", Target(">=", 1.0)),
    ]  # fmt: skip


def stitch_rows(data: list[dict[str, Any]]) -> list[Row]:
    """Rows from ``bench_infer.py stitch --json``: one entry per slide side."""
    rows = []
    for side in data:
        name = f"{side['side_px']} px side"
        rss = side["peak_rss_mib"]
        rows += [
            Row("stitch", f"{name}: stitch to GeoJSON", side["total_s"], "s"),
            Row("stitch", f"{name}: peak RSS", rss, "MiB", RSS_BOUND_MIB, "2 GiB", AT_MOST_1),
        ]
    return rows


def report_rows(data: dict[str, Any]) -> list[Row]:
    """Rows from ``bench_report.py --json``; no opening row where Chromium was missing."""
    rows = [Row("report", f"build for {data['slides']} slides", data["build_s"], "s")]
    if data["open_s"] is not None:
        rows.append(Row("report", "index opens", data["open_s"], "s", 2.0, "2 s", AT_MOST_1))
    return rows


def failed_row(benchmark: str, stderr: str, returncode: int) -> Row:
    """The row of a benchmark that failed: the last non-empty stderr line, else the code."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return Row(benchmark, "failed", error=lines[-1] if lines else f"exit status {returncode}")


# --- running the children -------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """What each child is asked to do; ``train`` and ``infer`` are extra CLI flags."""

    slide_px: int
    train: tuple[str, ...]
    infer_n: int
    infer: tuple[str, ...]
    stitch_sides: tuple[int, ...]
    report_slides: int = 1000
    e2e: tuple[str, ...] = ()


FULL = Sizes(
    slide_px=20_000,
    train=tuple(
        "--encoder resnet50 --input-px 224 --resize-px 256 --patch-px 256 --batch-size 32 "
        "--num-workers 8".split()
    ),
    infer_n=32_768,
    infer=tuple("--encoder resnet50 --stride8 --batch-size 128 --workers 8".split()),
    stitch_sides=(25_000, 50_000, 100_000),
    e2e=tuple("--size 100000 --encoder resnet50 --batch-size 128 --workers 8".split()),
)
QUICK = Sizes(
    slide_px=16_000,
    train=tuple("--steps 6 --repeats 2".split()),
    infer_n=512,
    infer=tuple("--encoder resnet18 --batch-size 64 --workers 2 --repeats 1".split()),
    stitch_sides=(25_000, 50_000),
    e2e=tuple(
        "--size 12000 --encoder resnet18 --stride-px 224 --batch-size 32 --workers 1 "
        "--repeats 2".split()
    ),
)


@dataclass(frozen=True)
class Bench:
    """A benchmark: commands run in order, the JSON the last one writes, how to read it."""

    name: str
    commands: list[list[str]]
    json_path: Path
    rows: Callable[[Any], list[Row]]


def benches(out: Path, sizes: Sizes, device: str) -> dict[str, Bench]:
    py, infer_py = sys.executable, str(HERE / "bench_infer.py")
    slide = out / f"slide-{sizes.slide_px}.svs"
    make_slide = [py, str(HERE / "make_slide.py"), str(slide), "--size", str(sizes.slide_px)]
    tile = [py, str(HERE / "bench_tile.py"), str(slide), "--json", str(out / "tile.json")]
    train = [py, str(HERE / "bench_train.py"), "--out", str(out / "train"), "--device", device]
    # the store depends only on n, so bench_infer may reuse one left by an earlier run
    n = sizes.infer_n
    infer = [py, infer_py, "throughput", "--device", device, "--n", str(n)]
    infer += ["--work", str(out / f"infer-n{n}"), "--json", str(out / "infer.json")]
    sides = [str(side) for side in sizes.stitch_sides]
    stitch = [py, infer_py, "stitch", "--sides", *sides, "--json", str(out / "stitch.json")]
    # the generated slide stays in --out and is reused by later runs of the same size
    e2e = [py, infer_py, "e2e", "--device", device, "--work", str(out / "e2e")]
    e2e += ["--json", str(out / "e2e.json"), *sizes.e2e]
    report = [py, str(HERE / "bench_report.py"), "--out", str(out / "report")]
    report += ["--slides", str(sizes.report_slides), "--json", str(out / "report.json")]
    return {
        "tile": Bench("tile", [make_slide, tile], out / "tile.json", tile_rows),
        "train": Bench(
            "train", [[*train, *sizes.train]], out / "train" / "bench_train.json", train_rows
        ),
        "infer": Bench("infer", [[*infer, *sizes.infer]], out / "infer.json", infer_rows),
        "e2e": Bench("e2e", [e2e], out / "e2e.json", e2e_rows),
        "stitch": Bench("stitch", [stitch], out / "stitch.json", stitch_rows),
        "report": Bench("report", [report], out / "report.json", report_rows),
    }


def run_bench(bench: Bench, log: Path) -> list[Row]:
    """Run a benchmark's commands (output to ``log``) and turn its JSON into rows."""
    bench.json_path.unlink(missing_ok=True)  # never read a stale result
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("w") as fh:
        for cmd in bench.commands:
            fh.write(f"$ {shlex.join(cmd)}\n")
            fh.flush()
            done = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.PIPE, text=True)
            fh.write(done.stderr)
            if done.returncode != 0:
                return [failed_row(bench.name, done.stderr, done.returncode)]
    try:
        return bench.rows(json.loads(bench.json_path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [Row(bench.name, "failed", error=f"{bench.json_path.name}: {exc!r}")]


# --- report ---------------------------------------------------------------------------------


def header(device: str, quick: bool) -> dict[str, Any]:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = "cuda asked for, none visible" if device == "cuda" else "cpu"
    return {
        "device": name,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.now().isoformat(timespec="seconds"),
        "sizes": "quick" if quick else "full",
    }


def header_line(head: dict[str, Any]) -> str:
    return (
        f"device {head['device']}, {head['cpu_count']} CPUs, torch {head['torch']}, "
        f"{head['date']}, {head['sizes']} sizes"
    )


def markdown_table(rows: list[Row]) -> str:
    """A Markdown table whose columns are padded, so it also reads well in a terminal."""
    table = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in table
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_report(out: Path, head: dict[str, Any], rows: list[Row], wall_s: float) -> str:
    """Write ``bench_all.json`` and ``bench_all.md``; return the Markdown."""
    text = f"{header_line(head)}\n\n{markdown_table(rows)}\n\nwall time {wall_s:.0f} s\n"
    report = {"header": head, "wall_s": round(wall_s, 1), "rows": [r.as_dict() for r in rows]}
    (out / "bench_all.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "bench_all.md").write_text(text)
    return text


def parse_only(text: str) -> list[str]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    if not names or names - set(BENCHMARKS):
        raise argparse.ArgumentTypeError(f"choose from {','.join(BENCHMARKS)}, comma-separated")
    return [name for name in BENCHMARKS if name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for results and logs")
    parser.add_argument("--quick", action="store_true", help="small sizes (~5-8 min on 2 CPUs)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--only",
        type=parse_only,
        default=list(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    head = header(args.device, args.quick)
    all_benches = benches(args.out, QUICK if args.quick else FULL, args.device)
    started = time.perf_counter()
    rows: list[Row] = []
    for name in args.only:
        t0 = time.perf_counter()
        print(f"running {name} (log: {args.out / f'{name}.log'})", flush=True)
        rows += run_bench(all_benches[name], args.out / f"{name}.log")
        print(f"  {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(write_report(args.out, head, rows, time.perf_counter() - started))
    return 1 if any(row.error for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
