"""The report's pictures, made from a slide's outputs: previews, ROI outlines, probability map.

Slide pictures are downsized JPEG (the index of a large cohort loads hundreds of them); the
probability map and the colour legend are PNG. The colours are the inference overlay's, so
the report and ``overlay.png`` read alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsi_pixelcam.geo.geojson import read_qupath_annotations
from wsi_pixelcam.geo.polygons import polygon_parts
from wsi_pixelcam.inference.stitch import overlay_png
from wsi_pixelcam.store.heatmap_store import open_heatmap

JPEG_QUALITY = 85
OUTLINE_RGB = (0, 255, 255)
MAX_UPSCALE = 8
NO_DATA_GREY = 235


def preview(src: Path, dst: Path, max_px: int) -> Path:
    """``src`` shrunk to fit ``max_px`` (never enlarged), as JPEG."""
    with Image.open(src) as image:
        rgb = image.convert("RGB")
    rgb.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    rgb.save(dst, format="JPEG", quality=JPEG_QUALITY)
    return dst


def readable(src: Path, dst: Path, target_px: int) -> Path:
    """``src`` scaled to about ``target_px`` on its long side (see :func:`_enlarged`), as JPEG."""
    with Image.open(src) as image:
        _enlarged(image.convert("RGB"), target_px).save(dst, format="JPEG", quality=JPEG_QUALITY)
    return dst


def _enlarged(image: Image.Image, target_px: int) -> Image.Image:
    """Scaled so its long side is about ``target_px``, at most MAX_UPSCALE times larger."""
    factor = min(MAX_UPSCALE, target_px / max(image.size))
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC)


def outlined_overlay(
    overlay: Path, rois: Path | None, heatmap: Path, frame_qupath: bool, dst: Path, target_px: int
) -> Path:
    """``overlay.png`` at a readable size with the ROI polygons of ``rois.geojson`` on it.

    The overlay covers the slide's level-0 extent from its top-left corner, as the heatmap
    does; ROIs written in QuPath's frame are shifted back by the heatmap's frame offset.
    """
    hm = open_heatmap(heatmap)
    extent_h, extent_w = (n * hm.level0_per_px for n in hm.levels[0].shape[1:])
    with Image.open(overlay) as image:
        canvas = _enlarged(image.convert("RGB"), target_px)
    if rois is not None:
        offset = hm.frame_offset_level0 if frame_qupath else (0.0, 0.0)
        sx, sy = canvas.width / extent_w, canvas.height / extent_h
        draw = ImageDraw.Draw(canvas)
        width = max(2, round(canvas.width / 400))
        for annotation in read_qupath_annotations(rois, frame_offset_level0=offset):
            for polygon in polygon_parts(annotation.geometry):
                for ring in (polygon.exterior, *polygon.interiors):
                    points = [(x * sx, y * sy) for x, y in ring.coords]
                    draw.line(points, fill=OUTLINE_RGB, width=width, joint="curve")
    canvas.save(dst, format="JPEG", quality=JPEG_QUALITY)
    return dst


def probability_map(
    class_probs: Path, channel: str, thumbnail: Path | None, dst: Path, target_px: int
) -> Path:
    """One class's probability per patch (``class_probs.zarr``), colour-mapped on the slide.

    Without a thumbnail the colours sit on plain grey; patches without a prediction show the
    background through.
    """
    hm = open_heatmap(class_probs)
    channels = list(hm.provenance.get("channels", []))
    values = np.asarray(hm.plane(0, channels.index(channel))[:, :])
    if thumbnail is not None:
        with Image.open(thumbnail) as image:
            base = _enlarged(image.convert("RGB"), target_px)
    else:
        base = _enlarged(Image.new("RGB", values.shape[::-1], (NO_DATA_GREY,) * 3), target_px)
    return overlay_png(np.asarray(base), values, dst, alpha=0.85)


def colour_legend(dst: Path, width: int = 256, height: int = 14) -> Path:
    """A 0 -> 1 strip of the heatmap colours, for the legend under every map."""
    ramp = np.tile(np.linspace(0.0, 1.0, width), (height, 1))
    return overlay_png(np.zeros((height, width, 3), np.uint8), ramp, dst, alpha=1.0)
