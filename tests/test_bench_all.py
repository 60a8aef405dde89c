"""bench_all's table logic: child JSON -> rows, targets met or not, failed children.

The heavy benchmarks never run here; children are one-line Python commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "benchmarks" / "bench_all.py"
_spec = importlib.util.spec_from_file_location("bench_all", SCRIPT)
assert _spec is not None and _spec.loader is not None
bench_all = importlib.util.module_from_spec(_spec)
sys.modules["bench_all"] = bench_all  # dataclasses look their module up while being built
_spec.loader.exec_module(bench_all)

TILE = {
    "stages": {
        "direct": {"patches": 400, "seconds": 1.0},
        "openslide": {"patches": 400, "seconds": 10.0},
        "tiler-1t": {"patches": 400, "seconds": 2.0},
        "tiler": {"patches": 400, "seconds": 1.25, "store_bytes": 96_000_000},
    },
    "ratios": {"store bytes / source bytes": 0.96},
}


def test_tile_rows_ratios_and_targets() -> None:
    direct, one_thread, openslide, store = bench_all.tile_rows(TILE)
    assert (direct.measure, direct.bound_name) == ("tiler", "direct reads")
    assert direct.value == pytest.approx(320) and direct.ratio == pytest.approx(0.8)
    assert direct.met == "yes"  # exactly on the >= 0.80 target
    assert one_thread.ratio == pytest.approx(0.5) and one_thread.met == "-"  # report only
    assert openslide.bound_name == "openslide loop"
    assert openslide.ratio == pytest.approx(8.0) and openslide.met == "yes"
    assert store.bound == pytest.approx(100.0) and store.ratio == pytest.approx(0.96)
    assert store.met == "yes"

    slow = json.loads(json.dumps(TILE))
    slow["stages"]["tiler"]["seconds"] = 4.0  # 100/s: 0.25 of direct, 2.5x openslide
    del slow["ratios"]
    rows = bench_all.tile_rows(slow)
    assert [r.met for r in rows] == ["no", "-", "no"]  # and no store row without the ratio


def test_train_and_infer_rows_use_the_best_runs() -> None:
    (train,) = bench_all.train_rows({"best_patches_per_s": {"loader": 85.0, "memory": 100.0}})
    assert train.ratio == pytest.approx(0.85) and train.met == "no"

    def run(memory: float, predict: float) -> dict:
        return {
            "memory_patches_per_s": memory,
            "predict_patches_per_s": predict,
            "stream_patches_per_s": predict / 2,
            "infer_patches_per_s": predict / 4,
        }

    data = {"device": "cpu", "n_patches": 512, "run0": run(90, 70), "run1": run(100, 95)}
    predict, stream, infer = bench_all.infer_rows(data)
    assert predict.bound == 100 and predict.value == 95
    assert predict.ratio == pytest.approx(0.95) and predict.met == "yes"
    assert stream.ratio == pytest.approx(0.475) and stream.met == "-"
    assert infer.value == pytest.approx(23.75) and infer.target is None


def test_stitch_rows_compare_peak_rss_with_2_gib() -> None:
    data = [
        {"side_px": 25_000, "total_s": 1.3, "peak_rss_mib": 237.0},
        {"side_px": 100_000, "total_s": 20.0, "peak_rss_mib": 2100.0},
    ]
    rows = bench_all.stitch_rows(data)
    assert [r.measure for r in rows] == [
        "25000 px side: stitch to GeoJSON",
        "25000 px side: peak RSS",
        "100000 px side: stitch to GeoJSON",
        "100000 px side: peak RSS",
    ]
    assert [r.met for r in rows] == ["-", "yes", "-", "no"]
    assert rows[0].ratio is None and rows[0].cells()[2] == "1.3 s"
    assert rows[3].ratio == pytest.approx(2100 / 2048)


def test_report_rows_bound_the_index_opening_by_2_s() -> None:
    rows = bench_all.report_rows({"slides": 1000, "build_s": 8.5, "open_s": 0.6})
    assert [r.measure for r in rows] == ["build for 1000 slides", "index opens"]
    assert rows[1].ratio == pytest.approx(0.3) and rows[1].met == "yes"
    assert len(bench_all.report_rows({"slides": 10, "build_s": 1.0, "open_s": None})) == 1


def test_failed_row_keeps_the_last_stderr_line() -> None:
    row = bench_all.failed_row("infer", "Traceback:\n  x\nValueError: a | b\n\n", 1)
    assert row.error == "ValueError: a | b" and row.met == "no" and row.ratio is None
    assert row.cells()[2] == "ValueError: a \\| b"  # a pipe cannot split the Markdown cell
    assert bench_all.failed_row("tile", "", 3).error == "exit status 3"


def test_run_bench_runs_children_and_records_failures(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    out.write_text("stale")  # must not be read back as a result
    result = json.dumps({"best_patches_per_s": {"loader": 9, "memory": 10}})
    write = f"import pathlib; pathlib.Path({str(out)!r}).write_text({result!r})"
    ok = bench_all.Bench("train", [[sys.executable, "-c", write]], out, bench_all.train_rows)
    (row,) = bench_all.run_bench(ok, tmp_path / "ok.log")
    assert row.ratio == pytest.approx(0.9) and row.met == "yes"

    crash = [sys.executable, "-c", "import sys; print('working'); sys.exit('boom: no GPU')"]
    failing = bench_all.Bench("infer", [crash, ["false"]], out, bench_all.infer_rows)
    (row,) = bench_all.run_bench(failing, tmp_path / "fail.log")
    assert row.benchmark == "infer" and row.error == "boom: no GPU"
    assert not out.exists()  # the stale result was removed before the run
    log = (tmp_path / "fail.log").read_text()
    assert "working" in log and "boom: no GPU" in log and "$ false" not in log

    silent = bench_all.Bench("stitch", [[sys.executable, "-c", "pass"]], out, bench_all.stitch_rows)
    (row,) = bench_all.run_bench(silent, tmp_path / "silent.log")
    assert row.error.startswith("train.json: FileNotFoundError")


def test_report_files_and_only(tmp_path: Path) -> None:
    rows = [
        *bench_all.train_rows({"best_patches_per_s": {"loader": 95.0, "memory": 100.0}}),
        bench_all.failed_row("tile", "OSError: disk full", 1),
    ]
    head = {"device": "cpu", "cpu_count": 2, "torch": "2.x", "date": "today", "sizes": "quick"}
    text = bench_all.write_report(tmp_path, head, rows, 12.3)
    assert text == (tmp_path / "bench_all.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 4 and len({len(line) for line in table}) == 1  # padded columns
    assert "| 0.95 " in table[2] and table[3].endswith("| no  |")
    saved = json.loads((tmp_path / "bench_all.json").read_text())
    assert [r["met"] for r in saved["rows"]] == ["yes", "no"]
    assert saved["rows"][1]["error"] == "OSError: disk full"

    assert bench_all.parse_only("stitch, tile") == ["tile", "stitch"]
    with pytest.raises(argparse.ArgumentTypeError):
        bench_all.parse_only("tile,gpu")


def test_e2e_rows_compare_streaming_with_store_first_and_the_model() -> None:
    def run(seconds: float, n: int = 700) -> dict:
        return {"seconds": seconds, "patches_per_s": n / seconds}

    data = {
        "slide_px": 12_000,
        "n_patches": 700,
        "memory_patches_per_s": 20.0,
        "runs": {"stream": run(40.0), "store": run(50.0), "lossless": run(55.0)},
        "rois_equal_lossless": True,
    }
    seconds, stream, store, rois = bench_all.e2e_rows(data)
    assert seconds.measure == "12k px slide, 700 patches: streaming to GeoJSON"
    assert seconds.ratio == pytest.approx(0.8) and seconds.met == "yes"  # faster: <= 1
    assert stream.ratio == pytest.approx(17.5 / 20) and stream.met == "-"
    assert store.ratio == pytest.approx(14.0 / 20)
    assert rois.met == "yes"
    slower = {**data, "runs": {**data["runs"], "stream": run(60.0)}, "rois_equal_lossless": False}
    assert [r.met for r in bench_all.e2e_rows(slower)] == ["no", "-", "-", "no"]
