"""Thumbnails of slides whose pyramid levels have rounded sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from slidegen import tissue_image

from wsi_pixelcam.slide import open_slide
from wsi_pixelcam.tiling.tissue import read_thumbnail


def test_thumbnail_of_a_level_whose_size_was_rounded_up(tmp_path: Path) -> None:
    """1898 / 4 = 474.5 rounds up to 475 rows, so the level's mean downsample is not 4.0."""
    image = tissue_image(2220, 1898, [(200, 200, 1800, 1600)])
    path = tmp_path / "odd.tif"
    with tifffile.TiffWriter(path) as writer:
        for index, level in enumerate((image, np.asarray(Image.fromarray(image).reduce(4)))):
            per_cm = 1e4 / (0.5 * (1 if index == 0 else 4))
            writer.write(
                level, tile=(256, 256), compression="jpeg", photometric="rgb",
                subfiletype=0 if index == 0 else 1, resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER", metadata=None,
            )  # fmt: skip
    with open_slide(path) as reader:
        assert reader.level_dimensions[1] == (555, 475)
        thumb = read_thumbnail(reader, 0.5, 8.0)
    assert thumb.rgb.shape == (119, 139, 3)
    # the tissue box is where it was drawn: rows 200-1600 of 1898 at 16 px per thumbnail pixel
    saturated = thumb.rgb.std(axis=2) > 20
    rows = np.flatnonzero(saturated.any(axis=1))
    assert abs(rows[0] - 200 / 16) <= 1 and abs(rows[-1] - 1600 / 16) <= 1
