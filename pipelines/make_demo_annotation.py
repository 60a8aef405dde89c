"""Derive the demo's "Epidermis" annotation for the bundled CMU-1-Small-Region.svs.

The slide ships without annotations, so the demo's ROI is derived from the tissue itself by
a stated rule (this is a proxy, not a pathologist's annotation):

1. read the slide at 4x downsample (~2 um/px) and separate stains with scikit-image's
   ``rgb2hed`` (Ruifrok & Johnston colour deconvolution);
2. smooth the haematoxylin channel with a Gaussian of sigma 12 px (~24 um): the epidermis is
   the band where nuclei are densest;
3. threshold at 0.85 x the Otsu threshold of the smoothed haematoxylin over tissue pixels
   (HSV saturation > 0.1); open with a 4 px disk; drop pieces under 20,000 um^2 and fill holes
   under 5,000 um^2;
4. vectorise with wsi_pixelcam.geo (level-0 pixel coordinates) and write QuPath GeoJSON.

The rule catches the main epidermal band and the lower-right ridge and misses the thin
lower-left ridge. Run from the repository root:

    python pipelines/make_demo_annotation.py wsi_pixelcam/examples/CMU-1-Small-Region.geojson
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.color import rgb2hed, rgb2hsv
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import disk, opening, remove_small_holes, remove_small_objects

from wsi_pixelcam.examples import bundled_example
from wsi_pixelcam.geo.geojson import annotation_feature, class_color, write_geojson
from wsi_pixelcam.geo.polygons import polygons_from_mask
from wsi_pixelcam.slide import open_slide, resolve_mpp

DOWNSAMPLE = 4
CLASS_NAME = "Epidermis"


def epidermis_mask(rgb: np.ndarray, px_um: float) -> np.ndarray:
    haematoxylin = gaussian(rgb2hed(rgb)[..., 0], sigma=12)
    tissue = rgb2hsv(rgb)[..., 1] > 0.1
    mask = (haematoxylin > 0.85 * threshold_otsu(haematoxylin[tissue])) & tissue
    mask = opening(mask, disk(4))
    mask = remove_small_objects(mask, max_size=int(20_000 / px_um**2))
    return np.asarray(remove_small_holes(mask, max_size=int(5_000 / px_um**2)), dtype=bool)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    with open_slide(bundled_example()) as reader:
        mpp = resolve_mpp(reader).mean
        rgb = reader.read_region((0, 0), 0, reader.dimensions)
    small = np.asarray(Image.fromarray(rgb).reduce(DOWNSAMPLE))
    mask = epidermis_mask(small, DOWNSAMPLE * mpp)
    polygons = polygons_from_mask(mask, level0_per_px=DOWNSAMPLE, mpp_level0=mpp, simplify_um=4.0)
    features = [
        annotation_feature(
            poly,
            class_name=CLASS_NAME,
            color=class_color(CLASS_NAME),
            name=f"{CLASS_NAME} {i + 1}",
            measurements={"area_um2": poly.area * mpp**2},
            metadata={"source": "pipelines/make_demo_annotation.py (rule-derived)"},
        )
        for i, poly in enumerate(polygons)
    ]
    write_geojson(args.out, features)
    print(
        f"{args.out}: {len(features)} {CLASS_NAME} polygon(s), "
        f"{sum(p.area for p in polygons) * mpp**2 / 1e6:.3f} mm^2"
    )


if __name__ == "__main__":
    main()
