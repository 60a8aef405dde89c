from pathlib import Path

import pytest

from wsi_pixelcam.config import TileConfig, load_config
from wsi_pixelcam.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_and_stride_default():
    cfg = load_config(TileConfig)
    assert cfg.target_mpp == 0.5 and cfg.stride == cfg.patch_px


def test_unknown_key_names_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tissue:\n  min_objet_um2: 5\n")
    with pytest.raises(ConfigError, match=r"c.yaml: tissue.min_objet_um2: unknown key"):
        load_config(TileConfig, path)


def test_bad_value_names_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("patch_px: -3\n")
    with pytest.raises(ConfigError, match=r"patch_px: Input should be greater"):
        load_config(TileConfig, path)


def test_overrides_win_and_none_is_ignored(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("patch_px: 512\n")
    cfg = load_config(TileConfig, path, {"patch_px": None, "store.jpeg_quality": 70})
    assert cfg.patch_px == 512 and cfg.store.jpeg_quality == 70


def test_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(TileConfig, path)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("tile*.yaml")))
def test_shipped_tile_configs_load(name):
    load_config(TileConfig, CONFIGS / name)


@pytest.mark.parametrize(
    ("text", "where"),
    [("a: [1, 2\nb: 3\n", "line 2, column 2"), ("a:\n  - x\n b: 1\n", "line 3, column 2")],
)
def test_invalid_yaml_is_one_line_with_line_and_column(tmp_path, text, where):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(TileConfig, path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid YAML at {where}: ")
