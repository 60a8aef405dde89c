"""A small real cohort run for the report tests, made once per session.

``RUN/stores`` and ``RUN/infer`` come from the real tiler and the real batch job function on
the generated test slide, with tiny real models whose predictions are known (one slide with
a tumour ROI, one predicted normal without ROIs, one that fails); ``RUN/model`` is a real
two-epoch training on synthetic stores and ``RUN/eval`` its real evaluation. A killed run's
temporary folder and a summary of a future schema version are added as a crash and an
upgrade would leave them.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from storegen import make_store

sys.path.insert(0, str(Path(__file__).parents[1] / "inference"))  # tiny_pixelcam
import tiny_pixelcam as tiny
from report_slide_ids import BROKEN, FUTURE, KILLED, NORMAL, TUMOUR

from wsi_pixelcam.batch import run_guarded, write_status_table
from wsi_pixelcam.config import EvalRunConfig, InferConfig, TileConfig, TrainConfig
from wsi_pixelcam.jobs import SlideJob, infer_job
from wsi_pixelcam.tiling import tile_slide
from wsi_pixelcam.training.evaluate import evaluate
from wsi_pixelcam.training.fit import summary_dict, train

TRAIN = {
    "model": {"encoder": "test_resnet", "stride8_no_dilation": True},
    "input": {"input_px": 32, "resize_px": 36},
    "optim": {"batch_size": 8, "base_lr": 0.01},
    "teacher": {"epochs": 2},
    "pixelcam": {"epochs": 2, "seeds": {"erode_k": 1}},
    "data": {"num_workers": 0, "val_fraction": 0.25},
    "eval": {"eval_px": 32},
}


@dataclass(frozen=True)
class CohortRun:
    root: Path
    model_path: Path


def _infer(store: str, slide_id: str, model: Path, out: Path):
    cfg = InferConfig(num_workers=0, batch_size=32, min_area_um2=0.0, threshold=0.5)
    job = SlideJob(store, slide_id)
    return run_guarded(
        lambda j: infer_job(j, cfg=cfg, model_path=str(model), out_dir=str(out)), job
    )


@pytest.fixture(scope="session")
def cohort_run(slides, tmp_path_factory) -> CohortRun:
    root = tmp_path_factory.mktemp("run")
    tile_cfg = TileConfig(target_mpp=tiny.MPP, patch_px=tiny.PATCH_PX)
    store = tile_slide(slides["svs"], tile_cfg, root / "stores").store_path
    tumour = tiny.save(root / "tumour.pt", tiny.constant_model(0.8, (0.3, 0.7)))
    normal = tiny.save(root / "normal.pt", tiny.constant_model(0.2, (0.9, 0.1)))
    broken = root / "broken.svs"
    broken.write_bytes(b"not a slide at all")
    infer = root / "infer"
    outcomes = [
        _infer(store, TUMOUR, tumour, infer),
        _infer(store, NORMAL, normal, infer),
        _infer(str(broken), BROKEN, tumour, infer),
    ]
    write_status_table(infer, "infer", outcomes)
    (infer / f"{KILLED}.tmp-0a1b2c3d" / "heatmap.zarr").mkdir(parents=True)
    shutil.copytree(infer / NORMAL, infer / FUTURE)
    summary = json.loads((infer / FUTURE / "summary.json").read_text())
    summary.update(slide_id=FUTURE, schema_version=99)
    (infer / FUTURE / "summary.json").write_text(json.dumps(summary))

    model_dir = root / "model"
    stores = [make_store(root / "train" / f"s{i}.zarr", n=16, seed=i) for i in range(4)]
    trained = train(TrainConfig.model_validate(TRAIN), stores, model_dir)
    (model_dir / "train_summary.json").write_text(json.dumps(summary_dict(trained)))
    assert trained.model_path is not None
    evaluate(trained.model_path, stores, EvalRunConfig(device="cpu")).write_json(
        root / "eval" / "test.json"
    )
    return CohortRun(root, trained.model_path)
