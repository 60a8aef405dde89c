"""GPU check: a tiny end-to-end train + infer on CUDA with AMP, with throughput and memory.

    python pipelines/gpu_check.py --out /tmp/gpu-check [--encoder resnet50] [--epochs 2]

Tiles the bundled slide at 0.5 um/px into 224 px patches (stride 112) labelled by the demo's
Epidermis annotation, trains teacher and PixelCAM (the paper's stride-8 ResNet-50, random init,
AMP) for a few epochs, infers the slide, and prints patches/s of each training stage and of
inference, and the peak GPU memory. Sized to finish in a few minutes on one modern GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wsi_pixelcam.config import InferConfig, TileConfig, TrainConfig
from wsi_pixelcam.examples import bundled_annotation, bundled_example
from wsi_pixelcam.inference.infer import infer_slide
from wsi_pixelcam.inference.predict import InferenceModel
from wsi_pixelcam.labels import LabelSource
from wsi_pixelcam.model.checkpoint import load_checkpoint
from wsi_pixelcam.tiling import tile_slide
from wsi_pixelcam.training.fit import train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")

    tiling = tile_slide(
        bundled_example(), TileConfig(patch_px=224, stride_px=112, min_tissue_frac=0.3),
        args.out / "stores", labels=LabelSource(annotations=bundled_annotation()),
    )  # fmt: skip
    cfg = TrainConfig.model_validate({
        "model": {"encoder": args.encoder, "stride8_no_dilation": True},
        "optim": {"batch_size": args.batch_size},
        "teacher": {"epochs": args.epochs, "cam_checkpoint": "best_cls"},
        "pixelcam": {"epochs": args.epochs},
        "data": {"val_fraction": 0.0, "num_workers": 8},
        "device": "cuda", "amp": True,
    })  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(cfg, [tiling.store_path], args.out / "model")
    train_s = time.perf_counter() - started
    assert result.model_path is not None
    rows = [json.loads(line) for line in (args.out / "model" / "metrics.jsonl").open()]
    network, meta = load_checkpoint(result.model_path, map_location="cuda")
    model = InferenceModel(network, meta, result.model_path.name)
    infer_cfg = InferConfig(device="cuda", amp=True, batch_size=256, num_workers=8)
    started = time.perf_counter()
    inference = infer_slide(tiling.store_path, model, infer_cfg, args.out / "infer", overwrite=True)
    infer_s = time.perf_counter() - started

    print(f"patches: {tiling.n_patches} ({cfg.model.encoder}, stride 8, AMP)")
    for row in rows:
        if "patches_per_s" in row:
            print(f"  {row['stage']:<9} epoch {row['epoch']}: {row['patches_per_s']:.0f} patches/s")
    print(
        f"train total {train_s:.1f} s; infer {infer_s:.1f} s "
        f"({inference.n_patches / infer_s:.0f} patches/s end to end, {inference.n_rois} ROIs)"
    )
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
