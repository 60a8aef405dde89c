"""QC files appear only beside a complete store: a killed run leaves none that look finished."""

import subprocess
import sys

import pytest

from wsi_pixelcam.config import TileConfig
from wsi_pixelcam.store import open_patch_store
from wsi_pixelcam.tiling import tile_slide

CFG = TileConfig(target_mpp=0.5, patch_px=128)
QC_FILES = {"thumbnail.png", "tissue_mask.png", "tissue_overlay.png", "tissue.geojson"}


def _killed_while_writing_patches(slide, out):
    """Tile ``slide`` in a child process that dies (no cleanup at all) mid-way through."""
    code = (
        "import os, sys\n"
        "from wsi_pixelcam.config import TileConfig\n"
        "from wsi_pixelcam.tiling import tile_slide\n"
        "tile_slide(sys.argv[1], TileConfig(target_mpp=0.5, patch_px=128), sys.argv[2],\n"
        "           progress=lambda done, total: os._exit(9))\n"
    )
    child = subprocess.run([sys.executable, "-c", code, str(slide), str(out)], timeout=300)
    assert child.returncode == 9  # it died inside the patch loop, as a kill would leave it


def test_killed_run_leaves_no_qc_folder_and_a_rerun_completes_both(tmp_path, slides):
    out = tmp_path / "out"
    _killed_while_writing_patches(slides["svs"], out)
    assert not (out / "svs_slide.zarr").exists()
    assert not (out / "svs_slide.qc").exists()  # only a temporary, which never looks finished

    result = tile_slide(slides["svs"], CFG, out)
    assert result.status == "ok" and len(open_patch_store(result.store_path)) == 64
    assert {p.name for p in (out / "svs_slide.qc").iterdir()} == QC_FILES
    assert sorted(p.name for p in out.iterdir()) == ["svs_slide.qc", "svs_slide.zarr"]


def test_failed_slide_leaves_no_qc_folder(tmp_path, slides):
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError):
        tile_slide(slides["svs"], CFG, out, progress=lambda done, total: 1 / 0)
    assert sorted(p.name for p in out.iterdir()) == []
