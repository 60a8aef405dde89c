"""GPU check: the open GPU benchmarks, then a tiny end-to-end train + infer on CUDA with AMP.

    python pipelines/gpu_check.py --out /tmp/gpu-check [--encoder resnet50] [--epochs 2]

First (``--bench``, the default on CUDA) it runs ``tests/benchmarks/bench_all.py`` one row at a
time into ``OUT/bench/<row>``, printing each table as soon as it is measured, the figures the
open GPU issue asks for first (a device session is cut off at its time limit, and what ran by
then is kept): ``e2e``, slide file -> GeoJSON on a generated 100k x 100k px JPEG slide,
streamed and store-first, each as a ratio to the model alone, and whether the streamed ROIs
equal a lossless store's; ``infer``, the model alone, ``predict_source``, streaming and whole
``infer_slide`` on a store; ``tile``, the tiler against tile-aligned direct reads on the
machine's own cores. ``--bench-quick`` uses bench_all's quick sizes (a 12k px slide, ResNet-18).

Then (``--no-train`` skips it) it tiles the bundled slide at 0.5 um/px into 224 px patches
(stride 112) labelled by the demo's Epidermis annotation, trains teacher and PixelCAM (the
paper's stride-8 ResNet-50, random init, AMP) for a few epochs, infers the slide, and prints
patches/s of each training stage and of inference, and the peak GPU memory;
``OUT/gpu_check.json`` keeps the same figures. Sized to finish in a few minutes on one GPU.

``--device cpu`` with a tiny encoder and small patches runs the same path without a GPU (no
AMP, no GPU memory figure): the test suite does that so that the script is known to work
before GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from wsi_pixelcam.config import InferConfig, TileConfig, TrainConfig
from wsi_pixelcam.examples import bundled_annotation, bundled_example
from wsi_pixelcam.inference.infer import infer_slide
from wsi_pixelcam.inference.predict import InferenceModel
from wsi_pixelcam.labels import LabelSource
from wsi_pixelcam.model.checkpoint import load_checkpoint
from wsi_pixelcam.tiling import tile_slide
from wsi_pixelcam.training.fit import train


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patch-px", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=0.5, help="patch resolution, um/px")
    parser.add_argument("--workers", type=int, default=8, help="loader processes")
    parser.add_argument(
        "--bench",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="then run bench_all's tile, infer and e2e rows (default: on CUDA only)",
    )
    parser.add_argument("--bench-quick", action="store_true", help="bench_all's quick sizes")
    parser.add_argument(
        "--train",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the tiny train + infer check (after the benchmarks)",
    )
    return parser.parse_args()


BENCH_ROWS = ("e2e", "infer", "tile")
"""bench_all rows in the order they run: the open GPU figures first (slide file -> GeoJSON, the
whole-slide ratios), as a device session is cut off at its time limit."""


def run_benchmarks(out: Path, device: str, quick: bool) -> list[str]:
    """bench_all's rows on this machine, one call each, each table printed (and kept under
    ``out/<row>``) as soon as it is measured; returns the rows that failed."""
    script = Path(__file__).resolve().parents[1] / "tests" / "benchmarks" / "bench_all.py"
    failed = []
    for row in BENCH_ROWS:
        cmd = [sys.executable, str(script), "--out", str(out / row), "--only", row]
        cmd += ["--device", device] + (["--quick"] if quick else [])
        print("$ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd, check=False).returncode:
            failed.append(row)
    return failed


def main() -> None:
    args = _parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch")
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"device: {device_name}, torch {torch.__version__}")

    bench = args.bench if args.bench is not None else cuda
    failed = run_benchmarks(args.out / "bench", args.device, args.bench_quick) if bench else []
    if failed:
        print(f"gpu_check: bench rows {failed} failed; see {args.out / 'bench'}", flush=True)
    if args.train:
        train_and_infer_check(args, device_name)
    if failed:
        raise SystemExit(f"gpu_check: bench rows {failed} failed")


def train_and_infer_check(args: argparse.Namespace, device_name: str) -> None:
    """Tile the bundled slide, train teacher and PixelCAM, infer it; print and keep the figures."""
    cuda = args.device == "cuda"
    tiling = tile_slide(
        bundled_example(),
        TileConfig(
            target_mpp=args.mpp, patch_px=args.patch_px, stride_px=args.patch_px // 2,
            min_tissue_frac=0.3,
        ),
        args.out / "stores", labels=LabelSource(annotations=bundled_annotation()),
    )  # fmt: skip
    cfg = TrainConfig.model_validate({
        "model": {"encoder": args.encoder, "stride8_no_dilation": True},
        "input": {"input_px": args.patch_px, "resize_px": args.patch_px + args.patch_px // 8},
        "optim": {"batch_size": args.batch_size},
        "teacher": {"epochs": args.epochs, "cam_checkpoint": "best_cls"},
        "pixelcam": {"epochs": args.epochs, "seeds": {"erode_k": 1 if args.patch_px < 128 else 3}},
        "data": {"val_fraction": 0.0, "num_workers": args.workers},
        "eval": {"eval_px": args.patch_px},
        "device": args.device, "amp": cuda,
    })  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(cfg, [tiling.store_path], args.out / "model")
    train_s = time.perf_counter() - started
    if result.model_path is None:
        raise SystemExit("gpu_check: training wrote no model")
    rows = [json.loads(line) for line in (args.out / "model" / "metrics.jsonl").open()]
    network, meta = load_checkpoint(result.model_path, map_location=args.device)
    model = InferenceModel(network, meta, result.model_path.name)
    infer_cfg = InferConfig(
        device=args.device, amp=cuda, batch_size=4 * args.batch_size, num_workers=args.workers
    )
    started = time.perf_counter()
    inference = infer_slide(tiling.store_path, model, infer_cfg, args.out / "infer", overwrite=True)
    infer_s = time.perf_counter() - started

    report: dict[str, Any] = {
        "device": device_name,
        "torch": torch.__version__,
        "encoder": cfg.model.encoder,
        "amp": cuda,
        "patches": tiling.n_patches,
        "train_epochs": [
            {k: row[k] for k in ("stage", "epoch", "patches_per_s")}
            for row in rows
            if "patches_per_s" in row
        ],
        "train_s": round(train_s, 1),
        "infer_s": round(infer_s, 1),
        "infer_patches_per_s": round(inference.n_patches / infer_s, 1),
        "n_rois": inference.n_rois,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if cuda
        else None,
    }
    print(f"patches: {tiling.n_patches} ({cfg.model.encoder}, stride 8, AMP {cuda})")
    for row in report["train_epochs"]:
        print(f"  {row['stage']:<9} epoch {row['epoch']}: {row['patches_per_s']:.0f} patches/s")
    print(
        f"train total {train_s:.1f} s; infer {infer_s:.1f} s "
        f"({report['infer_patches_per_s']:.0f} patches/s end to end, {inference.n_rois} ROIs)"
    )
    if cuda:
        print(f"peak GPU memory: {report['peak_gpu_memory_gib']:.2f} GiB")
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
