"""The built-in demo: tile the bundled slide, train a tiny PixelCAM on it, infer it.

Everything runs in this process (no cluster), with the settings of
``wsi_pixelcam/examples/demo.yaml``. Labels come from the rule-derived Epidermis annotation
shipped beside the slide, so the model learns to delineate the densely nucleated epidermis
against the dermis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_pixelcam.config import DemoConfig, load_config
from wsi_pixelcam.examples import bundled_annotation, bundled_example
from wsi_pixelcam.inference.infer import InferResult, infer_slide
from wsi_pixelcam.inference.predict import load_model
from wsi_pixelcam.inference.stitch import overlay_png
from wsi_pixelcam.labels import LabelSource
from wsi_pixelcam.progress import TaskProgress
from wsi_pixelcam.report.build import build_report
from wsi_pixelcam.slide import open_slide
from wsi_pixelcam.store.heatmap_store import open_heatmap
from wsi_pixelcam.tiling import TilingResult, tile_slide
from wsi_pixelcam.training.fit import TrainResult, summary_dict, train

StepFn = Callable[[str], None]
"""Told the name of each step as it starts ("tile", "train", "infer", "report")."""


@dataclass(frozen=True)
class DemoResult:
    tiling: TilingResult
    training: TrainResult
    inference: InferResult
    outputs: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)


def _full_overlay(heatmap_path: Path, png: Path) -> Path:
    """Side by side: the slide at the heatmap's resolution, and the heatmap blended on it.

    The store's thumbnail (8 um/px) is too coarse to see the epidermis; the bundled slide is
    small enough to read whole.
    """
    heatmap = open_heatmap(heatmap_path)
    plane = heatmap.plane(0, 0)
    values = np.asarray(plane[:, :])
    with open_slide(bundled_example()) as reader:
        rgb = reader.read_region((0, 0), 0, reader.dimensions)
    slide = np.asarray(Image.fromarray(rgb).resize((values.shape[1], values.shape[0])))
    overlay_png(slide, values, png, alpha=0.55)
    Image.fromarray(np.concatenate([slide, np.asarray(Image.open(png))], axis=1)).save(png)
    return png


def demo_config() -> DemoConfig:
    return load_config(DemoConfig, Path(str(files("wsi_pixelcam.examples") / "demo.yaml")))


def run_demo(
    out_dir: str | Path,
    *,
    cfg: DemoConfig | None = None,
    on_step: StepFn | None = None,
    progress: TaskProgress | None = None,
) -> DemoResult:
    """Tile -> train -> infer -> report the bundled slide into ``out_dir`` (stores/, model/,
    infer/, report/).

    Re-running skips the tiling and reuses finished training stages and outputs.
    """
    cfg = cfg or demo_config()
    out = Path(out_dir)
    step = on_step or (lambda name: None)
    seconds: dict[str, float] = {}

    step("tile")
    started = time.perf_counter()
    tiling = tile_slide(
        bundled_example(), cfg.tile, out / "stores",
        labels=LabelSource(annotations=bundled_annotation()),
    )  # fmt: skip
    seconds["tile"] = time.perf_counter() - started

    step("train")
    started = time.perf_counter()
    training = train(cfg.train, [tiling.store_path], out / "model", progress=progress)
    seconds["train"] = time.perf_counter() - started
    assert training.model_path is not None  # all stages ran
    (out / "model" / "train_summary.json").write_text(
        json.dumps(summary_dict(training), indent=2) + "\n"
    )  # as `wsi-pixelcam train` writes it: the report reads the chosen model from it

    step("infer")
    started = time.perf_counter()
    inference = infer_slide(
        tiling.store_path, load_model(training.model_path), cfg.infer, out / "infer"
    )
    seconds["infer"] = time.perf_counter() - started
    slide_out = Path(inference.out_dir)
    outputs = {
        "overlay": slide_out / "overlay.png",
        "overlay_full": _full_overlay(slide_out / "heatmap.zarr", out / "demo_overlay.png"),
        "rois": slide_out / "rois.geojson",
        "tiles": next(iter(sorted(slide_out.glob("tiles.geojson*"))), slide_out / "tiles.geojson"),
        "summary": slide_out / "summary.json",
        "heatmap": slide_out / "heatmap.zarr",
        "model": training.model_path,
        "slide": bundled_example(),
        "annotation": bundled_annotation(),
    }
    step("report")
    outputs["report"] = build_report([out], out / "report").index
    return DemoResult(tiling, training, inference, outputs, seconds)
