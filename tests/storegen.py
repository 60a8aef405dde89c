"""Small synthetic patch stores with known ROI masks, for training and evaluation tests.

Class-1 ("tumour") patches carry a saturated disc (the ROI, its mask known exactly) on a
noisy pink background; class-0 ("background") patches have background only. Written with
the library's own store writer, so the stores are the real format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsi_pixelcam.training.datasets import write_image_store

CLASSES = ("background", "tumour")


def synthetic_patches(
    n: int, patch_px: int, seed: int, positive_every: int = 2
) -> tuple[list[np.ndarray], list[int], list[np.ndarray]]:
    """``n`` patches, labels (every ``positive_every``-th is class 1) and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:patch_px, 0:patch_px]
    images, labels, masks = [], [], []
    for index in range(n):
        base = np.array([225.0, 170.0, 200.0]) + rng.normal(0, 12, (patch_px, patch_px, 3))
        mask = np.zeros((patch_px, patch_px), np.uint8)
        label = int(index % positive_every == positive_every - 1)
        if label:
            radius = rng.uniform(0.2, 0.35) * patch_px
            cy, cx = rng.uniform(radius, patch_px - radius, 2)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.uint8)
            base[mask > 0] = np.array([90.0, 30.0, 120.0]) + rng.normal(0, 12, (mask.sum(), 3))
        images.append(np.clip(base, 0, 255).astype(np.uint8))
        labels.append(label)
        masks.append(mask)
    return images, labels, masks


def make_store(
    path: Path,
    *,
    n: int = 8,
    patch_px: int = 32,
    seed: int = 0,
    with_masks: bool = True,
    classes: tuple[str, ...] = CLASSES,
    labels: list[int] | None = None,
    mpp: float | None = 0.5,
    slide_id: str | None = None,
) -> Path:
    """Write a store of :func:`synthetic_patches`; ``labels`` overrides the generated ones."""
    images, made, masks = synthetic_patches(n, patch_px, seed)
    return write_image_store(
        path,
        images,
        made if labels is None else labels,
        classes,
        masks=masks if with_masks else None,
        slide_id=slide_id or path.stem,
        mpp=mpp,
    )


def damage_first_shard(store):
    """Flip bytes in the patches' first shard, as a bad disk or a cut copy would."""
    shard = next(
        p for p in sorted((store / "patches").rglob("*")) if p.is_file() and p.name != "zarr.json"
    )
    data = bytearray(shard.read_bytes())
    data[-16:] = bytes(16)  # the shard index and its checksum
    shard.write_bytes(bytes(data))
