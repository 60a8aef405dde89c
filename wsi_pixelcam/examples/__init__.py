"""The bundled example: a real 20x Aperio SVS (CMU-1-Small-Region, CC0) and its demo ROI.

``CMU-1-Small-Region.geojson`` is rule-derived (see pipelines/make_demo_annotation.py), not a
pathologist's annotation.
"""

from importlib.resources import files
from pathlib import Path


def bundled_example() -> Path:
    """The CC0 Aperio slide shipped with the package (CMU-1-Small-Region.svs)."""
    return Path(str(files("wsi_pixelcam.examples") / "CMU-1-Small-Region.svs"))


def bundled_annotation() -> Path:
    """The demo's "Epidermis" QuPath annotation of the example slide."""
    return Path(str(files("wsi_pixelcam.examples") / "CMU-1-Small-Region.geojson"))
