"""Write a large synthetic JPEG pyramid (Aperio-style SVS) for benchmarks, tile by tile.

Level 0 is streamed from a generator, so a 20k x 20k slide never sits in memory. Tiles are
drawn from a pool of stained-looking textures, so JPEG sizes are realistic for H&E.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

TILE = 256


def _texture_pool(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(n):
        base = np.array([196, 110, 168]) + rng.normal(0, 12, 3)
        noise = rng.normal(0, 22, (TILE // 4, TILE // 4, 3)).repeat(4, 0).repeat(4, 1)
        fine = rng.normal(0, 6, (TILE, TILE, 3))
        pool.append(np.clip(base + noise + fine, 0, 255).astype(np.uint8))
    return pool


def _tiles(width: int, height: int, pool: list[np.ndarray], seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(-(-height // TILE) * -(-width // TILE)):
        yield pool[int(rng.integers(len(pool)))]


def write_benchmark_slide(path: Path, size: int = 20_000, mpp: float = 0.25) -> Path:
    pool = _texture_pool(64)
    description = (
        f"Aperio Image Library v12.0.15 \r\n{size}x{size} [0,0 {size}x{size}] ({TILE}x{TILE}) "
        f"JPEG/RGB Q=80|AppMag = 40|MPP = {mpp}"
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, ds in enumerate((1, 4, 16)):
            w = h = size // ds
            tw.write(
                _tiles(w, h, pool, seed=i),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                compressionargs={"level": 80},
                photometric="rgb",
                description=description,
                metadata=None,
            )
            if i == 0:
                tw.write(
                    pool[0],
                    compression="jpeg",
                    photometric="rgb",
                    description=description,
                    metadata=None,
                )
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--size", type=int, default=20_000)
    args = parser.parse_args()
    print(write_benchmark_slide(args.path, args.size))
