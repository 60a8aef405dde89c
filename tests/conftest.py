"""Shared fixtures: real slide files written once per session with a known tissue layout."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import slidegen

SHARED_SLIDES = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Layout:
    """A 4096 x 3072 slide at 0.25 um/px whose tissue is one box aligned to 256 px."""

    width: int = 4096
    height: int = 3072
    mpp: float = 0.25
    box: tuple[int, int, int, int] = (1024, 512, 3072, 2560)

    def expected_xy(self, patch_level0: int) -> set[tuple[int, int]]:
        x0, y0, x1, y1 = self.box
        return {
            (x, y)
            for x in range(x0, x1 - patch_level0 + 1, patch_level0)
            for y in range(y0, y1 - patch_level0 + 1, patch_level0)
        }


LAYOUT = Layout()


@pytest.fixture(scope="session")
def layout() -> Layout:
    return LAYOUT


@pytest.fixture(scope="session")
def tissue_image() -> np.ndarray:
    return slidegen.tissue_image(LAYOUT.width, LAYOUT.height, [LAYOUT.box], seed=1)


@pytest.fixture(scope="session")
def slides(tmp_path_factory: pytest.TempPathFactory, tissue_image: np.ndarray) -> dict[str, Path]:
    """One file per format the tests exercise, all showing the same tissue."""
    root = tmp_path_factory.mktemp("slides")
    mpp = LAYOUT.mpp
    return {
        "svs": slidegen.write_svs(root / "svs_slide.svs", tissue_image, mpp, (1, 4, 16)),
        "generic": slidegen.write_generic_tiff(root / "generic.tif", tissue_image, mpp, (1, 4)),
        "ome": slidegen.write_ome_tiff(root / "ome.ome.tif", tissue_image, mpp, (1, 4)),
        "flat": slidegen.write_flat_tiff(root / "flat.tif", tissue_image, mpp),
        "no_mpp": slidegen.write_generic_tiff(root / "no_mpp.tif", tissue_image, None, (1, 4)),
    }


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    from wsi_pixelcam.examples import bundled_example

    return bundled_example()
