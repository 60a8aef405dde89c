"""Slide reading: one interface over tiffslide and openslide, plus MPP resolution."""

from wsi_pixelcam.slide.base import BackendChoice, SlideReader
from wsi_pixelcam.slide.mpp import Mpp, check_mpp_value, check_target_mpp, resolve_mpp
from wsi_pixelcam.slide.open import open_slide

__all__ = [
    "BackendChoice",
    "Mpp",
    "SlideReader",
    "check_mpp_value",
    "check_target_mpp",
    "open_slide",
    "resolve_mpp",
]
