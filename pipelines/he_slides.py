"""H&E benchmark slides: real carcinoma inside real normal skin, with QuPath annotations.

A pathologist tests a tumour detector on tumour against normal tissue *in the same stain*,
so the classes must not differ by a colour cue a benchmark made easy. Each slide built here:

* normal tissue: the bundled CMU-1-Small-Region H&E skin section (0.5 um/px), flipped per
  slide; training/validation slides use its upper rows, test slides its lower rows;
* tumour: the H&E carcinoma field that ships in the ``tiatoolbox`` wheel
  (``tiatoolbox/data/target_image.png``, 1000 x 1000 px at ~0.25 um/px), resampled to
  0.5 um/px and stain-matched, stain by stain, to the section's epidermis (see
  ``stain_matched``), so both classes share one stain appearance; training lesions are cut
  from its upper rows, test lesions from its lower rows, so no test pixel was ever seen in
  training;
* lesions: smooth star-shaped regions of 60-120 um radius inside the tissue, filled by
  quilting random rotated/flipped crops of the tumour field with feathered seams, and pasted
  with a feathered edge; "decoys" of the same shapes are quilted from *other normal tissue*
  of the same section, so quilting seams and pasted edges appear in both classes and only
  the tissue itself tells tumour from normal;
* outputs: a tiled JPEG pyramidal TIFF (0.5 um/px in its resolution tags) and a QuPath
  GeoJSON of the lesions (class ``Tumor``, level-0 pixels).

The build is deterministic in its seed. ``he_benchmark_slides(out_dir)`` writes them all.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import tifffile
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.color import hed2rgb, rgb2hed, rgb2hsv
from skimage.morphology import closing, disk

from wsi_pixelcam.examples import bundled_annotation, bundled_example
from wsi_pixelcam.geo.geojson import (
    annotation_feature,
    class_color,
    read_qupath_annotations,
    write_geojson,
)
from wsi_pixelcam.geo.polygons import polygons_from_mask
from wsi_pixelcam.geo.raster import rasterise
from wsi_pixelcam.slide import open_slide

MPP = 0.5  # level-0 um/px of every benchmark slide (the CMU section's own)
TUMOUR_MPP = 0.25  # the tiatoolbox field: nuclei of 40-60 px are 10-15 um carcinoma nuclei
TUMOUR_CLASS = "Tumor"
TIATOOLBOX = "tiatoolbox==2.1.3"
TRAIN_ROWS = {"normal": 0.64, "tumour": 0.70}  # share of rows the train/val side may use
QUILT_PX = 96  # tile of the quilting, level-0 px (48 um)
QUILT_OVERLAP = 16
RADIUS_UM = (60.0, 120.0)  # lesion radius range


@dataclass(frozen=True)
class BenchmarkSlide:
    """One built slide: its file, its annotation and what it holds."""

    slide_id: str
    split: str
    path: Path
    annotations: Path
    tumour_um2: float
    tissue_um2: float


def tumour_field(cache_dir: Path) -> np.ndarray:
    """The tiatoolbox H&E carcinoma field as RGB uint8, fetched once from PyPI into a cache.

    An installed tiatoolbox is used as is; otherwise its wheel is downloaded with pip (no
    dependencies) and the one PNG is extracted.
    """
    png = cache_dir / "tiatoolbox_target_image.png"
    if not png.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp]
            subprocess.run([*cmd, TIATOOLBOX], check=True)
            wheel = next(Path(tmp).glob("tiatoolbox-*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                png.write_bytes(archive.read("tiatoolbox/data/target_image.png"))
    return np.asarray(Image.open(png).convert("RGB"))


def _resample(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (round(w * factor), round(h * factor))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Tissue where the smoothed HSV saturation exceeds 0.1."""
    return gaussian_filter(rgb2hsv(rgb)[..., 1], 2.0) > 0.1


def stain_matched(tumour: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``tumour`` re-stained so each stain's concentrations follow the reference's.

    Colour deconvolution into haematoxylin, eosin and DAB (scikit-image's ``rgb2hed``), then
    per stain a quantile mapping of the tumour's tissue pixels onto the reference's. With
    the reference being normal *epidermis* (as cellular as carcinoma), colour statistics
    alone cannot tell tumour from normal: the nuclei's size, shape and arrangement must.
    """
    source, target = rgb2hed(tumour), rgb2hed(reference)
    source_tissue = tissue_mask(tumour).reshape(-1)
    target_values = target.reshape(-1, 3)[tissue_mask(reference).reshape(-1)]
    quantiles = np.linspace(0.0, 1.0, 1001)
    matched = source.reshape(-1, 3).copy()
    for channel in range(3):
        src_q = np.quantile(source.reshape(-1, 3)[source_tissue, channel], quantiles)
        dst_q = np.quantile(target_values[:, channel], quantiles)
        matched[:, channel] = np.interp(matched[:, channel], src_q, dst_q)
    rgb = hed2rgb(matched.reshape(source.shape))
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def epidermis(rgb: np.ndarray) -> np.ndarray:
    """The bundled slide's pixels inside its (rule-derived) Epidermis annotation."""
    annotations = read_qupath_annotations(bundled_annotation())
    geometry = shapely.union_all([a.geometry for a in annotations])
    return rgb[rasterise(geometry, (0.0, 0.0), rgb.shape[:2])][None]


class CropSource:
    """Random crops of a real image where tissue fills >= 90% of the crop."""

    def __init__(self, rgb: np.ndarray, side: int) -> None:
        tissue = tissue_mask(rgb).astype(np.float64)
        integral = np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        s = side
        window = integral[s:, s:] - integral[:-s, s:] - integral[s:, :-s] + integral[:-s, :-s]
        self.corners = np.argwhere(window / (s * s) >= 0.9)
        if not len(self.corners):
            raise RuntimeError(f"no {side} px crop of a source image is 90% tissue")
        self.rgb, self.side = rgb, side

    def crop(self, rng: np.random.Generator) -> np.ndarray:
        y, x = self.corners[rng.integers(len(self.corners))]
        patch = np.rot90(self.rgb[y : y + self.side, x : x + self.side], k=int(rng.integers(4)))
        return patch[:, ::-1] if rng.random() < 0.5 else patch


def quilt(source: CropSource, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width) texture of overlapping source crops blended with linear ramps."""
    step = source.side - QUILT_OVERLAP
    ramp = np.minimum(np.arange(source.side) + 1, np.arange(source.side)[::-1] + 1)
    weight = np.minimum(ramp / QUILT_OVERLAP, 1.0)
    tile_w = np.outer(weight, weight)[..., None]
    rows, cols = -(-height // step) + 1, -(-width // step) + 1
    acc = np.zeros((rows * step + QUILT_OVERLAP, cols * step + QUILT_OVERLAP, 3))
    norm = np.zeros((*acc.shape[:2], 1))
    for r in range(rows):
        for c in range(cols):
            y, x = r * step, c * step
            acc[y : y + source.side, x : x + source.side] += tile_w * source.crop(rng)
            norm[y : y + source.side, x : x + source.side] += tile_w
    return (acc / np.maximum(norm, 1e-6))[:height, :width]


def blob(radius_px: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth star-shaped region: a disc whose radius varies with low angular harmonics."""
    side = int(2 * radius_px * 1.5) + 1
    yy, xx = np.mgrid[:side, :side] - side / 2
    angle, dist = np.arctan2(yy, xx), np.hypot(yy, xx)
    radius = np.ones_like(angle)
    for k in range(2, 6):
        radius += rng.uniform(0.0, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return np.asarray(dist <= radius_px * radius)


def _place(
    canvas: np.ndarray,
    tissue: np.ndarray,
    taken: np.ndarray,
    texture_source: CropSource,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """Paste one lesion-shaped region of quilted texture; returns its mask (None: no room)."""
    for _ in range(200):
        shape = blob(rng.uniform(RADIUS_UM[0], RADIUS_UM[1]) / MPP, rng)
        side = shape.shape[0]
        h, w = tissue.shape
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        window = (slice(y, y + side), slice(x, x + side))
        region = shape & tissue[window]
        if region.sum() < 0.5 * shape.sum() or (region & taken[window]).any():
            continue
        region = closing(region, disk(4))
        alpha = np.clip(gaussian_filter(region.astype(np.float64), 3.0), 0, 1)[..., None]
        texture = quilt(texture_source, side, side, rng)
        canvas[window] = alpha * texture + (1 - alpha) * canvas[window]
        mask = np.zeros_like(tissue)
        mask[window] = alpha[..., 0] >= 0.5
        taken[window] |= np.asarray(gaussian_filter(shape.astype(float), 20) > 0.01)
        return mask
    return None


def build_slide(
    base: np.ndarray,
    tumour: CropSource,
    normal: CropSource,
    n_lesions: int,
    n_decoys: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A normal section with tumour lesions and normal decoys pasted; (rgb, tumour mask)."""
    flips = rng.integers(2, size=2)
    canvas = base[:: 1 - 2 * flips[0], :: 1 - 2 * flips[1]].astype(np.float64)
    tissue = tissue_mask(canvas.astype(np.uint8))
    taken = np.zeros_like(tissue)
    tumour_mask = np.zeros_like(tissue)
    for kind in ["tumour"] * n_lesions + ["decoy"] * n_decoys:
        mask = _place(canvas, tissue, taken, tumour if kind == "tumour" else normal, rng)
        if mask is None:
            raise RuntimeError(f"no room left for a {kind} region on a benchmark slide")
        if kind == "tumour":
            tumour_mask |= mask
    return np.clip(canvas, 0, 255).astype(np.uint8), tumour_mask & tissue


def write_tiff(path: Path, rgb: np.ndarray) -> Path:
    """A tiled JPEG pyramid (downsamples 1 and 4), MPP in the resolution tags."""
    with tifffile.TiffWriter(path) as writer:
        for index, ds in enumerate((1, 4)):
            level = rgb if ds == 1 else np.asarray(Image.fromarray(rgb).reduce(ds))
            per_cm = 1e4 / (MPP * ds)
            writer.write(
                level,
                tile=(256, 256),
                compression="jpeg",
                compressionargs={"level": 90},
                photometric="rgb",
                subfiletype=0 if index == 0 else 1,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return path


def write_annotation(path: Path, mask: np.ndarray) -> Path:
    """The tumour mask as QuPath GeoJSON annotations in level-0 pixels."""
    small = mask[::2, ::2]
    polygons = polygons_from_mask(small, level0_per_px=2, mpp_level0=MPP, simplify_um=2.0)
    features = [
        annotation_feature(
            poly,
            class_name=TUMOUR_CLASS,
            color=class_color(TUMOUR_CLASS),
            name=f"{TUMOUR_CLASS} {i + 1}",
            measurements={"area_um2": poly.area * MPP**2},
        )
        for i, poly in enumerate(polygons)
    ]
    write_geojson(path, features)
    return path


SPLITS = {"train": 3, "val": 1, "test": 2}  # slides per split


def he_benchmark_slides(out_dir: Path, seed: int = 0) -> dict[str, list[BenchmarkSlide]]:
    """Build (or reuse, when the manifest says the same seed) every benchmark slide."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "slides.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved.get("seed") == seed:
            return {
                split: [BenchmarkSlide(**{**s, "path": Path(s["path"]),
                                         "annotations": Path(s["annotations"])}) for s in slides]
                for split, slides in saved["splits"].items()
            }  # fmt: skip
    with open_slide(bundled_example()) as reader:
        normal_rgb = reader.read_region((0, 0), 0, reader.dimensions)
    raw_tumour = tumour_field(out_dir / "cache")
    tumour_rgb = stain_matched(_resample(raw_tumour, TUMOUR_MPP / MPP), epidermis(normal_rgb))
    sides = {}
    for side, upper in (("trainval", True), ("test", False)):
        n_cut = int(TRAIN_ROWS["normal"] * normal_rgb.shape[0])
        t_cut = int(TRAIN_ROWS["tumour"] * tumour_rgb.shape[0])
        base = normal_rgb[:n_cut] if upper else normal_rgb[n_cut:]
        tumour = tumour_rgb[:t_cut] if upper else tumour_rgb[t_cut:]
        sides[side] = (base, CropSource(tumour, QUILT_PX), CropSource(base, QUILT_PX))
    built: dict[str, list[BenchmarkSlide]] = {}
    for split_index, (split, count) in enumerate(SPLITS.items()):
        base, tumour, normal = sides["test" if split == "test" else "trainval"]
        n_lesions, n_decoys = (2, 2) if split == "test" else (3, 2)
        built[split] = []
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            rgb, mask = build_slide(base, tumour, normal, n_lesions, n_decoys, rng)
            slide_id = f"he-{split}-{index}"
            built[split].append(
                BenchmarkSlide(
                    slide_id,
                    split,
                    write_tiff(out_dir / f"{slide_id}.tif", rgb),
                    write_annotation(out_dir / f"{slide_id}.geojson", mask),
                    float(mask.sum()) * MPP**2,
                    float(tissue_mask(rgb).sum()) * MPP**2,
                )
            )
    record = {
        "seed": seed,
        "tumour_field_sha256": hashlib.sha256(raw_tumour.tobytes()).hexdigest(),
        "splits": {
            split: [{**s.__dict__, "path": str(s.path), "annotations": str(s.annotations)}
                    for s in slides]
            for split, slides in built.items()
        },
    }  # fmt: skip
    manifest.write_text(json.dumps(record, indent=2) + "\n")
    return built
