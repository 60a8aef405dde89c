"""Training throughput: the real loader from patch stores vs the same batches held in memory.

Run on demand (not part of the test suite):

    python tests/benchmarks/bench_train.py --out /tmp/bench_train            # CPU defaults
    python tests/benchmarks/bench_train.py --out /tmp/bt --device cuda --encoder resnet50 \\
        --input-px 224 --resize-px 256 --patch-px 256 --batch-size 32 --num-workers 8

The stores hold overlapping tissue patches of the bundled CMU slide, JPEG-compressed as the
tiler stores them, split into two stores of one label each (two classes), with random
teacher CAMs added for the PixelCAM stage.
Both runs use the library's own ``train_epoch`` on one model and optimiser: ``loader`` feeds
it from a DataLoader over the stores (zarr read, JPEG decode, augmentation in worker
processes), ``memory`` feeds it the very batches that loader produced, already in memory.
Overhead = 1 - loader / memory throughput; the target is under 10%. Each mode runs
``--repeats`` times, alternating, after one warm-up pass, and the best run of each counts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import tifffile
import torch

from wsi_pixelcam.config import OptimConfig, SeedsConfig
from wsi_pixelcam.data.patch_dataset import PatchDataset, read_store_info
from wsi_pixelcam.data.store_arrays import add_array
from wsi_pixelcam.data.transforms import TrainTransform
from wsi_pixelcam.model.device import resolve_device
from wsi_pixelcam.model.encoders import build_encoder
from wsi_pixelcam.model.pixelcam import PixelCAM
from wsi_pixelcam.training.datasets import write_image_store
from wsi_pixelcam.training.loop import (
    Seeder,
    SharedGeometry,
    make_loader,
    make_optimizer,
    train_epoch,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tissue_patches(patch_px: int) -> list[np.ndarray]:
    """Overlapping patches of the bundled CMU slide (level 0) that are mostly tissue.

    Read with tifffile rather than the slide stack, so the benchmark needs only the training
    side's packages (it also runs on GPU machines that lack openslide).
    """
    rgb = tifffile.imread(files("wsi_pixelcam") / "examples" / "CMU-1-Small-Region.svs")
    stride = max(8, patch_px // 4)
    high, low = rgb.max(axis=-1).astype(np.float32), rgb.min(axis=-1).astype(np.float32)
    tissue = (high - low) / np.maximum(high, 1) > 0.1  # HSV saturation
    patches = []
    for y in range(0, rgb.shape[0] - patch_px + 1, stride):
        for x in range(0, rgb.shape[1] - patch_px + 1, stride):
            if tissue[y : y + patch_px, x : x + patch_px].mean() >= 0.5:
                patches.append(np.ascontiguousarray(rgb[y : y + patch_px, x : x + patch_px]))
    return patches


def build_stores(out: Path, patch_px: int, feature_hw: tuple[int, int]) -> list[Path]:
    """Two JPEG patch stores (labels "normal" and "tumour") with random teacher CAMs."""
    patches = tissue_patches(patch_px)
    paths = []
    for label, part in ((0, patches[0::2]), (1, patches[1::2])):
        path = write_image_store(
            out / f"cmu-{label}.zarr", part, [label] * len(part), ("normal", "tumour")
        )
        cams = np.random.default_rng(label).random((len(part), *feature_hw)).astype(np.float16)
        add_array(
            path, "cams", shape=cams.shape, dtype="float16", chunk_rows=1024,
            record={"teacher_sha256": "random", "method": "cam"},
            blocks=[(0, cams)],
        )  # fmt: skip
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = PixelCAM(
        build_encoder(args.encoder, stride8_no_dilation=args.stride8), num_classes=2
    ).to(device)
    with torch.no_grad():
        probe = model(torch.zeros(1, 3, args.input_px, args.input_px, device=device))
    feature_hw = (int(probe.features.shape[-2]), int(probe.features.shape[-1]))
    stores = build_stores(args.out / "stores", args.patch_px, feature_hw)
    infos = [read_store_info(p) for p in stores]
    pixelcam = args.stage == "pixelcam"
    transform = TrainTransform(
        SharedGeometry(args.resize_px, args.input_px, True, feature_hw if pixelcam else (1, 1)),
        (0.5, 0.5, 0.5, 0.05),
        MEAN,
        STD,
    )
    dataset = PatchDataset(infos, ("normal", "tumour"), transform, with_cam=pixelcam)
    # an epoch of ``steps`` batches, cycling over the stores' patches as often as needed
    order = np.arange(args.steps * args.batch_size) % len(dataset)
    subset = torch.utils.data.Subset(dataset, order.tolist())
    seeder = Seeder.from_config(SeedsConfig(), ("normal", "tumour")) if pixelcam else None
    optimizer = make_optimizer(model, OptimConfig(batch_size=args.batch_size, base_lr=1e-3))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")

    def loader() -> Any:
        return make_loader(
            subset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
            seed=0, device=device, drop_last=True,
        )  # fmt: skip

    batches = list(loader())  # what the loader yields, held in memory
    common = {"device": device, "amp": True, "seeder": seeder, "lam": 1.0, "seed": 0}
    train_epoch(model, batches, optimizer, scaler, **common)  # warm-up (allocator, kernels)
    results: dict[str, list[float]] = {"loader": [], "memory": []}
    for _ in range(args.repeats):
        for mode in ("loader", "memory"):
            feed = loader() if mode == "loader" else batches
            if device.type == "cuda":
                torch.cuda.synchronize()
            stats = train_epoch(model, feed, optimizer, scaler, **common)
            if device.type == "cuda":
                torch.cuda.synchronize()
            results[mode].append(stats.patches_per_s)
    best = {mode: max(values) for mode, values in results.items()}
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "feature_hw": feature_hw,
        "patches_per_epoch": len(batches) * args.batch_size,
        "patches_per_s": results,
        "best_patches_per_s": best,
        "loader_overhead": 1.0 - best["loader"] / best["memory"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", choices=("teacher", "pixelcam"), default="pixelcam")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--no-stride8", dest="stride8", action="store_false")
    parser.add_argument("--patch-px", type=int, default=128)
    parser.add_argument("--resize-px", type=int, default=128)
    parser.add_argument("--input-px", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=24, help="batches per timed epoch")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    started = time.perf_counter()
    report = run(args)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_train.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({k: report[k] for k in ("device_name", "best_patches_per_s", "loader_overhead")})
    )


if __name__ == "__main__":
    main()
