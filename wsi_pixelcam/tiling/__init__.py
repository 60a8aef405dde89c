"""Slide -> tissue mask -> patch grid -> patch store. Never imports torch."""

from wsi_pixelcam.tiling.tiler import TilingResult, tile_slide

__all__ = ["TilingResult", "tile_slide"]
