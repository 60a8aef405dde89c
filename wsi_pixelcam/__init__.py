"""wsi-pixelcam: whole-slide images to PixelCAM region-of-interest maps for QuPath.

The names below are the public API a script or notebook needs; everything else is internal and
may change. Importing the package is cheap: each name loads its module (and torch, for the
model) on first use.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("wsi-pixelcam")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from wsi_pixelcam.config import InferConfig, TileConfig
    from wsi_pixelcam.geo.geojson import read_qupath_annotations, write_geojson
    from wsi_pixelcam.inference.infer import InferResult, infer_slide
    from wsi_pixelcam.inference.predict import InferenceModel, load_model
    from wsi_pixelcam.slide import SlideReader, open_slide
    from wsi_pixelcam.store import PatchStore, PatchStoreMeta, open_patch_store
    from wsi_pixelcam.tiling import TilingResult, tile_slide

_PUBLIC = {
    "open_slide": "wsi_pixelcam.slide",
    "SlideReader": "wsi_pixelcam.slide",
    "TileConfig": "wsi_pixelcam.config",
    "tile_slide": "wsi_pixelcam.tiling",
    "TilingResult": "wsi_pixelcam.tiling",
    "open_patch_store": "wsi_pixelcam.store",
    "PatchStore": "wsi_pixelcam.store",
    "PatchStoreMeta": "wsi_pixelcam.store",
    "load_model": "wsi_pixelcam.inference.predict",
    "InferenceModel": "wsi_pixelcam.inference.predict",
    "InferConfig": "wsi_pixelcam.config",
    "infer_slide": "wsi_pixelcam.inference.infer",
    "InferResult": "wsi_pixelcam.inference.infer",
    "read_qupath_annotations": "wsi_pixelcam.geo.geojson",
    "write_geojson": "wsi_pixelcam.geo.geojson",
}

__all__ = [
    "InferConfig",
    "InferResult",
    "InferenceModel",
    "PatchStore",
    "PatchStoreMeta",
    "SlideReader",
    "TileConfig",
    "TilingResult",
    "__version__",
    "infer_slide",
    "load_model",
    "open_patch_store",
    "open_slide",
    "read_qupath_annotations",
    "tile_slide",
    "write_geojson",
]


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562), so ``import wsi_pixelcam`` and the
    CLI's ``--help`` never pay for torch."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_pixelcam' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
