"""``wsi-pixelcam train``: teacher -> CAM dump -> PixelCAM on patch stores."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_pixelcam.cli.common import EXIT_OK, add_common, add_config_options, parse_overrides

if TYPE_CHECKING:
    from wsi_pixelcam.training.stage import StageResult


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train a PixelCAM model (teacher, CAM dump, PixelCAM) on patch stores",
        description="Train on labelled patch stores; checkpoints and metrics.jsonl go to --out.",
    )
    train.add_argument("--stores", nargs="+", type=Path, required=True, help="patch stores")
    train.add_argument(
        "--val-stores", nargs="+", type=Path, help="validation stores (default: a slide split)"
    )
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--stage", choices=("teacher", "cams", "pixelcam"), help="run one stage")
    add_config_options(train, "configs/train.yaml")
    train.add_argument("--encoder", help="timm encoder name (model.encoder)")
    train.add_argument("--epochs", type=int, help="epochs of both trained stages")
    train.add_argument("--device", help="auto, cpu, cuda[:N] or mps")
    add_common(train)
    train.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from wsi_pixelcam.cli.progress import EpochBars
    from wsi_pixelcam.config import TrainConfig, load_config
    from wsi_pixelcam.training.distributed import process_group
    from wsi_pixelcam.training.fit import summary_dict, train

    overrides = {
        "model.encoder": args.encoder,
        "teacher.epochs": args.epochs,
        "pixelcam.epochs": args.epochs,
        "device": args.device,
        **parse_overrides(args.overrides),
    }
    cfg = load_config(TrainConfig, args.config, overrides)
    # under torchrun (python -m torch.distributed.run / torchrun ... -m wsi_pixelcam train)
    # every rank runs this; rank 0 alone logs progress, prints and writes the summary
    with process_group(cfg.device) as context:
        if not context.is_main:
            logging.getLogger("wsi_pixelcam").setLevel(logging.WARNING)
        with EpochBars(disable=args.quiet or not context.is_main) as bars:
            result = train(
                cfg, args.stores, args.out, stage=args.stage, val_store_paths=args.val_stores,
                progress=bars.task, context=context,
            )  # fmt: skip
    if not context.is_main:
        return EXIT_OK
    summary = summary_dict(result)
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"trained on {result.device}: stages {', '.join(result.stages)}; run in {args.out}")
    for name, stage in (("teacher", result.teacher), ("pixelcam", result.pixelcam)):
        if stage is not None:
            print(f"  {name}: {_stage_line(stage)}")
    if result.model_path is not None:
        print(f"model for infer: {result.model_path}")
    return EXIT_OK


def _stage_line(stage: StageResult) -> str:
    """The stage's kept checkpoints and their validation scores."""
    parts = [f"{stage.epochs} epochs"]
    for kind, best in (("best_cls", stage.best_cls), ("best_loc", stage.best_loc)):
        if best is not None:
            parts.append(f"{kind} {best.path.name} (epoch {best.epoch}, {best.score:.1f})")
    return "; ".join(parts)
