"""CAM method names come from one enum: configs and ``eval --cam-method`` accept exactly them."""

from __future__ import annotations

import pytest

from wsi_pixelcam.cam_method import CamMethod
from wsi_pixelcam.cli import main
from wsi_pixelcam.config import InferConfig, TrainConfig, load_config
from wsi_pixelcam.errors import ConfigError


@pytest.mark.parametrize("method", [m.value for m in CamMethod])
def test_configs_take_every_method_by_its_name(method):
    train = load_config(TrainConfig, overrides={"teacher.cam_method": method})
    infer = load_config(InferConfig, overrides={"cam_method": method})
    assert train.teacher.cam_method is CamMethod(method)
    assert infer.cam_method is CamMethod(method)


def test_configs_refuse_other_names_listing_the_methods():
    listed = r"teacher.cam_method: .*'cam', 'gradcampp' or 'layercam'"
    with pytest.raises(ConfigError, match=listed):
        load_config(TrainConfig, overrides={"teacher.cam_method": "gradcam"})


def test_eval_offers_exactly_the_methods(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["eval", "--cam-method", "gradcam"])
    assert caught.value.code == 2
    assert "(choose from 'cam', 'gradcampp', 'layercam')" in capsys.readouterr().err
