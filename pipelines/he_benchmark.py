"""The H&E localisation benchmark: train on some benchmark slides, score unseen ones.

Each row trains one recipe (``configs/train_cpu_demo.yaml`` with the row's overrides) on the
same tiled stores, then scores the unseen test slides as a user would meet them: patch
accuracy and PxAP from ``evaluate`` on their stores (masks from the annotations), and the
ROIs that ``infer`` writes for the slide files against the annotation. The slides are
described in ``he_slides.py``; ``localisation_benchmark.py --task he`` runs this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from he_slides import TUMOUR_CLASS, BenchmarkSlide, he_benchmark_slides

from wsi_pixelcam.config import EvalRunConfig, InferConfig, TileConfig, TrainConfig, set_dotted
from wsi_pixelcam.inference.evaluate_slide import evaluate_slide
from wsi_pixelcam.inference.infer import infer_slide
from wsi_pixelcam.inference.predict import load_model
from wsi_pixelcam.labels import LabelSource
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.tiling.tiler import tile_slide
from wsi_pixelcam.training.evaluate import evaluate
from wsi_pixelcam.training.fit import train

logger = logging.getLogger(__name__)

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "train_cpu_demo.yaml"
TILING = {"target_mpp": 1.0, "patch_px": 64, "stride_px": 32}  # as the demo tiles
OFF = {"data.balance_classes": False, "input.hed_jitter": 0.0, "pixelcam.seeds.balance": False}
ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "random ResNet-18 (previous CPU recipe)",
        {
            **OFF,
            "model.encoder": "resnet18",
            "model.pretrained": False,
            "model.output_stride": None,
            "model.stride8_no_dilation": True,
            "optim.base_lr": 0.01,
        },
    ),
    ("ImageNet EfficientNet-Lite0, no training change", OFF),
    ("train_cpu_demo.yaml (Lite0 + class-balanced sampling)", {}),
    ("  + HED stain jitter 0.05", {"input.hed_jitter": 0.05}),
    ("  + balanced fg/bg seeds", {"pixelcam.seeds.balance": True}),
)


def tile_all(slides: dict[str, list[BenchmarkSlide]], out: Path) -> dict[str, list[Path]]:
    """Tile every slide with its annotations (labels and masks), as ``tile`` does."""
    cfg = TileConfig.model_validate(TILING)
    stores: dict[str, list[Path]] = {}
    for split, items in slides.items():
        stores[split] = [
            tile_slide(
                s.path, cfg, out, slide_id=s.slide_id,
                labels=LabelSource(annotations=s.annotations),
            ).store_path
            for s in items
        ]  # fmt: skip
    return stores


def colour_only_accuracy(stores: dict[str, list[Path]], seed: int) -> dict[str, float]:
    """Test accuracy of a logistic regression on patch colour statistics alone.

    Per-channel mean and standard deviation of each patch: if these separate tumour from
    normal, the benchmark tests colour, not tissue.
    """

    def features(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for path in paths:
            store = open_patch_store(path)
            patches = np.asarray(store.patches[:]).astype(np.float32) / 255.0
            xs.append(np.concatenate([patches.mean((1, 2)), patches.std((1, 2))], axis=1))
            tumour = store.classes.index(TUMOUR_CLASS)
            ys.append((store.labels == tumour).astype(np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    x_train, y_train = features(stores["train"])
    x_test, y_test = features(stores["test"])
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    torch.manual_seed(seed)
    model = torch.nn.Linear(x_train.shape[1], 2)
    optimiser = torch.optim.LBFGS(model.parameters(), max_iter=500)
    weights = 1.0 / torch.bincount(y_train, minlength=2).float().clamp_min(1)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model((x_train - mean) / std), y_train, weight=weights
        )
        loss.backward()
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        predicted = model((x_test - mean) / std).argmax(1)
    per_class = [float((predicted[y_test == k] == k).float().mean()) for k in (0, 1)]
    return {
        "accuracy": round(100.0 * float((predicted == y_test).float().mean()), 2),
        "balanced_accuracy": round(50.0 * sum(per_class), 2),
    }


def run_row(
    name: str,
    overrides: dict[str, Any],
    slides: dict[str, list[BenchmarkSlide]],
    stores: dict[str, list[Path]],
    out: Path,
    epochs: int | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Train one recipe (with ``extra`` overrides on top) and score it on the unseen slides."""
    started = time.perf_counter()
    settings = {**overrides, **extra}
    # a run directory per recipe: rerunning with other settings never meets an old run
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    out = out.with_name(f"{out.name}-{digest}")
    if epochs is not None:
        settings["teacher.epochs"] = settings["pixelcam.epochs"] = epochs
    tree = yaml.safe_load(RECIPE.read_text())
    for dotted, value in settings.items():  # None is a value here (output_stride: null)
        set_dotted(tree, dotted, value)
    cfg = TrainConfig.model_validate(tree)
    result = train(cfg, stores["train"], out / "run", val_store_paths=stores["val"])
    trained = time.perf_counter()
    assert result.model_path is not None and result.teacher is not None
    teacher_ckpt = result.teacher.best_loc.path if result.teacher.best_loc else (
        result.teacher.best_cls.path
    )  # fmt: skip
    eval_cfg = EvalRunConfig(metrics=cfg.eval, device="cpu", num_workers=cfg.data.num_workers)
    common: dict[str, Any] = {"cfg": eval_cfg, "val_store_paths": stores["val"]}
    pixel = evaluate(result.model_path, stores["test"], **common)
    teacher = evaluate(teacher_ckpt, stores["test"], **common)
    assert pixel.pixelcam is not None and teacher.cam is not None
    model = load_model(result.model_path)
    infer_cfg = InferConfig(device="cpu", num_workers=0, write_tiles=False)
    slide_scores = []
    for slide in slides["test"]:
        inferred = infer_slide(slide.path, model, infer_cfg, out / "infer", slide_id=slide.slide_id)
        scores = evaluate_slide(inferred.out_dir, slide.annotations)
        slide_scores.append(scores)
    labels = np.concatenate([open_patch_store(p).labels for p in stores["test"]])
    majority = 100.0 * np.bincount(labels[labels >= 0]).max() / (labels >= 0).sum()
    return {
        "recipe": name,
        "overrides": overrides,
        "accuracy": round(pixel.accuracy, 2),
        "majority_rate": round(float(majority), 2),
        "pxap_pixelcam": round(pixel.pixelcam.pxap, 2),
        "pxap_teacher_cam": round(teacher.cam.pxap, 2),
        "tau": slide_scores[0].threshold,
        "slide_pxap": round(float(np.mean([s.pxap for s in slide_scores])), 2),
        "roi_dice": round(float(np.mean([s.dice_fg for s in slide_scores])) / 100.0, 3),
        "roi_polygon_iou": round(float(np.mean([s.polygon_iou for s in slide_scores])) / 100.0, 3),
        "per_slide": [
            {"slide": s.heatmap, "pxap": s.pxap, "dice": s.dice_fg, "polygon_iou": s.polygon_iou}
            for s in slide_scores
        ],
        "seconds": {
            "train": round(trained - started, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "config": cfg.model_dump(mode="json"),
    }


COLUMNS = (
    "recipe",
    "accuracy",
    "majority_rate",
    "pxap_pixelcam",
    "pxap_teacher_cam",
    "tau",
    "slide_pxap",
    "roi_dice",
    "roi_polygon_iou",
)


def run_he(
    out: Path, seed: int, epochs: int | None, only: list[int] | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """Build, tile, run every row (or rows ``only``), write ``he_benchmark.json`` and a table."""
    started = time.perf_counter()
    slides = he_benchmark_slides(out / "slides", seed)
    stores = tile_all(slides, out / "stores")
    for paths in stores.values():
        missing = [p for p in paths if not open_patch_store(p).has("masks")]
        if missing:
            raise RuntimeError(f"{missing[0]}: tiled without masks")
    prepared = time.perf_counter()
    rows = []
    for index, (name, overrides) in enumerate(ROWS):
        if only is not None and index not in only:
            continue
        logger.info("row %d: %s", index, name)
        rows.append(run_row(name, overrides, slides, stores, out / f"row{index}", epochs, extra))
        logger.info("row %d: %s", index, {c: rows[-1][c] for c in COLUMNS})
    final = rows[-1]
    report = {
        "rows": rows,
        "colour_only": colour_only_accuracy(stores, seed),
        "targets": {
            "roi_dice>=0.75": final["roi_dice"] >= 0.75,
            "pxap_gain>=5": final["pxap_pixelcam"] - final["pxap_teacher_cam"] >= 5,
            "accuracy_above_majority": final["accuracy"] - final["majority_rate"],
        },
        "patches": {
            split: int(sum(len(open_patch_store(p).labels) for p in paths))
            for split, paths in stores.items()
        },
        "seconds": {
            "prepare": round(prepared - started, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    (out / "he_benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    colour = report["colour_only"]
    print(
        f"colour statistics alone: accuracy {colour['accuracy']}, balanced "
        f"{colour['balanced_accuracy']}; patches {report['patches']}; "
        f"{report['seconds']['total']:.0f} s total"
    )
    return report
