"""``wsi-pixelcam eval``: WSOL metrics of a checkpoint on stores, or of a slide heatmap."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_pixelcam.cam_method import CamMethod
from wsi_pixelcam.cli.common import EXIT_OK, add_common
from wsi_pixelcam.errors import ManifestError

if TYPE_CHECKING:
    from wsi_pixelcam.metrics import LocalizationScores


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="accuracy, PxAP, Dice and IoU of a checkpoint on stores, or of an inferred slide",
        description="Either --model with --stores (patch-level WSOL metrics, PixelCAM map and "
        "teacher CAM side by side) or --heatmap with --annotations (slide-level PxAP, Dice "
        "and polygon IoU of an infer output against a QuPath GeoJSON).",
    )
    ev.add_argument("--model", type=Path, help="checkpoint to evaluate on --stores")
    ev.add_argument("--stores", nargs="+", type=Path, help="test patch stores")
    ev.add_argument("--val-stores", nargs="+", type=Path, help="stores that choose the tau")
    ev.add_argument(
        "--heatmap", type=Path, help="an infer output folder (OUT/<slide_id>) or heatmap.zarr"
    )
    ev.add_argument(
        "--annotations",
        type=Path,
        help="ground truth: a QuPath GeoJSON (with --heatmap), or a directory of "
        "<slide_id>.geojson to rasterise masks from, replacing those a store got at tile time "
        "(with --stores; stores tiled with --annotations need none)",
    )
    ev.add_argument(
        "--cam-method", default=CamMethod.CAM.value, choices=[m.value for m in CamMethod]
    )
    ev.add_argument(
        "--threshold", type=float, help="ROI threshold for --heatmap (default: infer's)"
    )
    ev.add_argument("--classes", nargs="+", help="annotation classes that count as ROI")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", type=Path, help="also write the result as JSON")
    add_common(ev)
    ev.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.heatmap is not None:
        return _slide(args)
    if args.model is None or not args.stores:
        raise ManifestError("eval needs --model and --stores, or --heatmap and --annotations")
    from wsi_pixelcam.cli.progress import EpochBars
    from wsi_pixelcam.config import EvalRunConfig
    from wsi_pixelcam.training.evaluate import evaluate

    annotations = None
    if args.annotations is not None:
        annotations = {
            store: args.annotations / f"{store.stem}.geojson"
            for store in args.stores
            if (args.annotations / f"{store.stem}.geojson").exists()
        }
    with EpochBars(disable=args.quiet) as bars:
        result = evaluate(
            args.model, args.stores, EvalRunConfig(cam_method=args.cam_method, device=args.device),
            val_store_paths=args.val_stores, annotations=annotations, progress=bars.task,
        )  # fmt: skip
    print(
        f"{result.checkpoint} ({result.stage}) on {len(result.stores)} store(s), "
        f"{result.n_patches} patches: accuracy {result.accuracy:.1f}%"
    )
    rows = [("PixelCAM", result.pixelcam), (f"teacher {result.cam_method}", result.cam)]
    for name, ev in rows:
        if ev is None:
            continue
        line = f"  {name:<16} PxAP {ev.pxap:5.1f}  at tau {ev.at_fixed_tau.tau:.2f}: " + _scores(
            ev.at_fixed_tau
        )
        if ev.at_val_tau is not None:
            line += f"  at val tau {ev.at_val_tau.tau:.3f}: {_scores(ev.at_val_tau)}"
        print(line)
    if result.stores_without_masks:
        print(
            f"  {len(result.stores_without_masks)} store(s) without masks: accuracy only "
            "(tile with --annotations, or pass --annotations DIR)"
        )
    if args.json:
        result.write_json(args.json)
    return EXIT_OK


def _scores(scores: LocalizationScores) -> str:
    return f"Dice {scores.dice_fg:.1f} IoU {scores.iou_fg:.1f} mIoU {scores.miou:.1f}"


def _slide(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from wsi_pixelcam.inference.evaluate_slide import evaluate_slide

    if args.annotations is None or not args.annotations.is_file():
        raise ManifestError("eval --heatmap needs --annotations FILE.geojson")
    result = evaluate_slide(
        args.heatmap, args.annotations, threshold=args.threshold, classes=args.classes
    )
    print(
        f"{result.heatmap} vs {result.annotations} at tau {result.threshold:.3f}: "
        f"PxAP {result.pxap:.1f}, Dice {result.dice_fg:.1f}, IoU {result.iou_fg:.1f}, "
        f"polygon IoU {result.polygon_iou:.1f} ({result.mpp:g} um/px)"
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return EXIT_OK
