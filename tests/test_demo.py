"""The demo's code path on the real bundled slide (one epoch per stage to stay fast)."""

import json

from wsi_pixelcam.config import DemoConfig
from wsi_pixelcam.demo import demo_config, run_demo
from wsi_pixelcam.geo.qupath_rules import validate_geojson_file


def test_demo_writes_valid_outputs(tmp_path):
    shipped = demo_config().model_dump()
    shipped["train"]["teacher"]["epochs"] = 1
    shipped["train"]["pixelcam"]["epochs"] = 1
    result = run_demo(tmp_path, cfg=DemoConfig.model_validate(shipped))
    out = result.outputs
    assert result.tiling.n_patches > 400
    assert out["overlay"].is_file() and out["overlay_full"].is_file()
    validate_geojson_file(out["rois"])
    validate_geojson_file(out["tiles"])
    summary = json.loads(out["summary"].read_text())
    assert summary["complete"] is True
    assert set(summary["prediction"]["class_probs"]) == {"Epidermis", "background"}
    assert summary["rois"]["class"] == "Epidermis"
    assert out["report"] == tmp_path / "report" / "index.html"
    model_page = (tmp_path / "report" / "model.html").read_text()
    assert "CMU-1-Small-Region" in out["report"].read_text() and "<svg" in model_page


def test_demo_trains_with_the_cpu_recipe():
    """The demo's model is configs/train_cpu_demo.yaml's; only its data and device differ."""
    from pathlib import Path

    from wsi_pixelcam.config import TrainConfig, load_config

    recipe = load_config(TrainConfig, Path(__file__).parents[1] / "configs/train_cpu_demo.yaml")
    demo = demo_config().train
    for section in ("model", "input", "optim"):
        assert getattr(demo, section) == getattr(recipe, section), section
    assert demo.pixelcam == recipe.pixelcam
    assert demo.teacher.epochs == recipe.teacher.epochs
    assert demo.model.pretrained == "imagenet"
