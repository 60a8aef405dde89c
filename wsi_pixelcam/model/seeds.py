"""Pixel pseudo-labels (seeds) drawn from teacher CAMs, redrawn at every training step.

Seeds live on the feature grid ("low_res" in the authors' code): 1 foreground, 0 background,
IGNORE_INDEX everywhere else. The CAM gets the image's geometric augmentation before it is
downsampled to that grid (:func:`augment_pair`), so seeds point at the pixels the network sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from skimage.filters import threshold_otsu
from skimage.morphology import erosion, footprint_rectangle

from wsi_pixelcam.errors import ConfigError

IGNORE_INDEX = -255
"""Seed value of unlabelled pixels; the partial cross-entropy skips it."""


@dataclass(frozen=True)
class SeedConfig:
    """How seeds are drawn from a CAM (defaults: the paper's, except ``erode_k``).

    ``method``: "threshold" draws foreground uniformly from the eroded Otsu region;
    "probability" draws it with probability proportional to the CAM. ``erode_k`` is the side
    of the square that erodes the Otsu region: the authors' code uses 11, which wipes out
    regions narrower than 11 cells on a 28x28 grid, so the default here is 3.
    """

    method: Literal["threshold", "probability"] = "threshold"
    n_fg: int = 5
    n_bg: int = 5
    min_p: float = 0.4
    erode_k: int = 3

    def __post_init__(self) -> None:
        if self.method not in ("threshold", "probability"):
            raise ConfigError(f"seeds.method={self.method!r}: use 'threshold' or 'probability'")
        if self.n_fg < 0 or self.n_bg < 0:
            raise ConfigError(f"seeds.n_fg={self.n_fg}, n_bg={self.n_bg}: counts must be >= 0")
        if not 0.0 < self.min_p <= 1.0:
            raise ConfigError(f"seeds.min_p={self.min_p}: must be in (0, 1]")
        if self.erode_k < 1:
            raise ConfigError(f"seeds.erode_k={self.erode_k}: must be >= 1 (1 = no erosion)")


def draw_seeds(
    cams: torch.Tensor,
    negative: torch.Tensor | None = None,
    config: SeedConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Seeds (B, h, w) long for CAMs (B, h, w) in [0, 1].

    ``negative`` (B,) bool marks patches of the negative class (e.g. "normal"): they get only
    ``n_bg`` background seeds, drawn anywhere. Otherwise a constant CAM yields no seeds. Pass a
    CPU ``generator`` for reproducible draws.
    """
    cfg = config or SeedConfig()
    cam_np = cams.detach().float().cpu().numpy()
    neg = (
        np.zeros(len(cam_np), dtype=bool)
        if negative is None
        else negative.detach().cpu().numpy().astype(bool)
    )
    seeds = np.full(cam_np.shape, IGNORE_INDEX, dtype=np.int64)
    for index, cam in enumerate(cam_np):
        fg, bg = _seed_indices(cam, bool(neg[index]), cfg, generator)
        flat = seeds[index].reshape(-1)
        flat[bg] = 0
        flat[fg] = 1
        flat[np.intersect1d(fg, bg)] = IGNORE_INDEX
    return torch.from_numpy(seeds).to(cams.device)


def _seed_indices(
    cam: np.ndarray, negative: bool, cfg: SeedConfig, generator: torch.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the foreground and background seeds of one (h, w) CAM."""
    flat = cam.reshape(-1)
    none = np.zeros(0, dtype=np.int64)
    if negative:
        return none, _uniform(np.arange(flat.size), cfg.n_bg, generator)
    if flat.max() == flat.min():
        return none, none
    # stable sort: ties in the background pool resolve the same way every time
    bg_pool = np.argsort(flat, kind="stable")[: int(cfg.min_p * flat.size)]
    bg = _uniform(bg_pool, cfg.n_bg, generator)
    if cfg.method == "threshold":
        fg = _uniform(np.flatnonzero(otsu_region(cam, cfg.erode_k)), cfg.n_fg, generator)
    else:
        fg = _proportional(flat, cfg.n_fg, generator)
    return fg, bg


def otsu_region(cam: np.ndarray, erode_k: int) -> np.ndarray:
    """Foreground pool: pixels above the Otsu threshold of floor(255 * cam), eroded once.

    The threshold is clamped to [1, 254] as in the authors' code; erosion uses an
    ``erode_k`` x ``erode_k`` square and treats the outside of the map as foreground.
    """
    quantised = np.floor(255.0 * cam)
    if quantised.max() == quantised.min():
        return np.zeros(cam.shape, dtype=bool)
    threshold = min(max(float(threshold_otsu(quantised)), 1.0), 254.0)
    region = quantised > threshold
    if erode_k > 1:
        region = erosion(region, footprint_rectangle((erode_k, erode_k)), mode="ignore")
    return np.asarray(region, dtype=bool)


def _uniform(pool: np.ndarray, count: int, generator: torch.Generator | None) -> np.ndarray:
    """Up to ``count`` members of ``pool`` drawn uniformly without replacement."""
    order = torch.randperm(pool.size, generator=generator).numpy()
    return pool[order[:count]].astype(np.int64)


def _proportional(weights: np.ndarray, count: int, generator: torch.Generator | None) -> np.ndarray:
    """Up to ``count`` indices drawn without replacement with probability proportional to weight."""
    probs = torch.from_numpy(np.clip(weights, 0.0, None).astype(np.float64))
    count = min(count, int((probs > 0).sum()))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return torch.multinomial(probs, count, replacement=False, generator=generator).numpy()


@dataclass(frozen=True)
class GeometricAug:
    """One draw of the geometric augmentation a patch and its CAM share.

    The image is resized to ``resize_px`` square, cropped to ``crop_px`` at ``crop_xy``
    ((x, y) of the crop's top-left corner), then flipped.
    """

    resize_px: int
    crop_px: int
    crop_xy: tuple[int, int] = (0, 0)
    hflip: bool = False
    vflip: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.crop_px <= self.resize_px:
            raise ConfigError(
                f"crop_px={self.crop_px}, resize_px={self.resize_px}: need 0 < crop <= resize"
            )
        x, y = self.crop_xy
        if not (
            0 <= x <= self.resize_px - self.crop_px and 0 <= y <= self.resize_px - self.crop_px
        ):
            raise ConfigError(
                f"crop_xy={self.crop_xy}: a {self.crop_px}px crop must fit in {self.resize_px}px"
            )


def random_geometric_aug(
    resize_px: int, crop_px: int, *, flips: bool = True, generator: torch.Generator | None = None
) -> GeometricAug:
    """Draw a random crop position and (if ``flips``) horizontal/vertical flips."""
    room = resize_px - crop_px + 1
    if room < 1:
        raise ConfigError(f"crop_px={crop_px} is larger than resize_px={resize_px}")
    x, y = torch.randint(0, room, (2,), generator=generator).tolist()
    hflip, vflip = (torch.rand(2, generator=generator) < 0.5).tolist()
    return GeometricAug(resize_px, crop_px, (x, y), flips and hflip, flips and vflip)


def augment_pair(
    image: torch.Tensor, cam: torch.Tensor, aug: GeometricAug, feature_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``aug`` to a float image (C, H, W) and its CAM (h, w) alike.

    Returns the augmented image (C, crop, crop) and the CAM on the feature grid
    ``feature_hw``; no colour change touches the CAM.
    """
    size = (aug.resize_px, aug.resize_px)
    big_image = F.interpolate(
        image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
    )
    big_cam = F.interpolate(
        cam[None, None].float(), size=size, mode="bilinear", align_corners=False
    )
    stacked = torch.cat([big_image, big_cam], dim=1)[0]
    x, y = aug.crop_xy
    stacked = stacked[:, y : y + aug.crop_px, x : x + aug.crop_px]
    if aug.hflip:
        stacked = stacked.flip(-1)
    if aug.vflip:
        stacked = stacked.flip(-2)
    out_image, out_cam = stacked[:-1], stacked[-1]
    small_cam = F.interpolate(
        out_cam[None, None], size=feature_hw, mode="bilinear", align_corners=False, antialias=True
    )[0, 0]
    return out_image.contiguous(), small_cam.clamp(0.0, 1.0)
