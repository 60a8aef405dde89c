"""wsi-pixelcam: whole-slide images to PixelCAM region-of-interest maps for QuPath.

Importing the package is cheap: torch and timm load only when a model is used.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsi-pixelcam")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
