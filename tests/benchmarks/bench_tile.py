"""Tiling benchmark: the tiler against its bounds and a CLAM-style loop, on one slide.

Run on demand (not part of the test suite):

    python tests/benchmarks/make_slide.py /tmp/bench20k.svs          # 20k x 20k JPEG pyramid
    python tests/benchmarks/bench_tile.py /tmp/bench20k.svs --patch-px 512

Every stage runs in its own subprocess so its peak RSS is its own; the bounds and the tiler
run ``--repeats`` times in turns and keep their best. Stages (all on the same level-0 patches,
no resampling):
  decode      every level-0 JPEG tile under the grid, decoded as tifffile does (decode bound)
  direct      per patch: read its tiles' bytes, decode, assemble (tile-aligned direct reads)
  tiffslide   one tiffslide read_region per patch
  openslide   one openslide read_region per patch (the CLAM-style loop)
  tiler-1t    wsi-pixelcam tile_slide with 1 read thread (reads + JPEG encode + zarr write)
  tiler       wsi-pixelcam tile_slide with the default config's threads
The tiler stages run with the malloc settings of the dask workers that tile slides in use.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wsi_pixelcam.batch import WORKER_MALLOC_ENV

STAGES = ("decode", "direct", "tiffslide", "openslide", "tiler-1t", "tiler")
REPEATED = ("decode", "direct", "tiler-1t", "tiler")  # the bounds and the tiler


def _grid(size: tuple[int, int], patch: int) -> list[tuple[int, int]]:
    return [
        (x, y)
        for y in range(0, size[1] - patch + 1, patch)
        for x in range(0, size[0] - patch + 1, patch)
    ]


def _level0_page(slide: Path):  # type: ignore[no-untyped-def]
    import tifffile

    tif = tifffile.TiffFile(slide)
    return tif, tif.pages[0]


def _decode_tile(page, fh: int, index: int) -> np.ndarray:
    """One tile's pixels, decoded as the file says (its photometric picks the JPEG colour
    space: an SVS's YCbCr tiles decoded as RGB would skip the colour conversion every real
    reader pays, and be the wrong pixels)."""
    data = os.pread(fh, page.databytecounts[index], page.dataoffsets[index])
    tile, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
    return tile.reshape(shape[1:])[:, :, :3]


def stage_decode(slide: Path, patch: int) -> dict:
    tif, page = _level0_page(slide)
    fh = os.open(slide, os.O_RDONLY)
    tiles_x = -(-page.imagewidth // page.tilewidth)
    n_patches = len(_grid((page.imagewidth, page.imagelength), patch))
    per_patch = (patch // page.tilewidth) * (patch // page.tilelength)
    # decode exactly the tiles the patch grid covers
    rows = (page.imagelength // patch) * patch // page.tilelength
    cols = (page.imagewidth // patch) * patch // page.tilewidth
    start = time.perf_counter()
    for r in range(rows):
        for c in range(cols):
            i = r * tiles_x + c
            _decode_tile(page, fh, i)
    seconds = time.perf_counter() - start
    tif.close()
    return {"patches": rows * cols / per_patch, "seconds": seconds, "n_grid": n_patches}


def stage_direct(slide: Path, patch: int) -> dict:
    tif, page = _level0_page(slide)
    fh = os.open(slide, os.O_RDONLY)
    tw, th = page.tilewidth, page.tilelength
    tiles_x = -(-page.imagewidth // tw)
    grid = _grid((page.imagewidth, page.imagelength), patch)
    start = time.perf_counter()
    for x, y in grid:
        out = np.empty((patch, patch, 3), np.uint8)
        for ty in range(y // th, (y + patch) // th):
            for tx in range(x // tw, (x + patch) // tw):
                tile = _decode_tile(page, fh, ty * tiles_x + tx)
                out[ty * th - y : ty * th - y + th, tx * tw - x : tx * tw - x + tw] = tile
    seconds = time.perf_counter() - start
    tif.close()
    return {"patches": len(grid), "seconds": seconds}


def stage_backend(slide: Path, patch: int, backend: str) -> dict:
    from wsi_pixelcam.slide import open_slide

    with open_slide(slide, backend) as reader:
        grid = _grid(reader.dimensions, patch)
        start = time.perf_counter()
        for x, y in grid:
            reader.read_region((x, y), 0, (patch, patch))
        seconds = time.perf_counter() - start
    return {"patches": len(grid), "seconds": seconds}


def stage_tiler(slide: Path, patch: int, threads: int | None) -> dict:
    from wsi_pixelcam.config import TileConfig
    from wsi_pixelcam.tiling import tile_slide

    cfg: dict[str, float | int] = {
        "target_mpp": slide_mpp(slide),
        "patch_px": patch,
        "min_tissue_frac": 0.0,
    }
    if threads is not None:
        cfg["read_threads"] = threads
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = tile_slide(slide, TileConfig.model_validate(cfg), out)
        seconds = time.perf_counter() - start
        store = Path(result.store_path) / "patches"
        store_bytes = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    return {"patches": result.n_patches, "seconds": seconds, "store_bytes": store_bytes}


def slide_mpp(slide: Path) -> float:
    from wsi_pixelcam.slide import open_slide, resolve_mpp

    with open_slide(slide) as reader:
        return resolve_mpp(reader).mean


def source_bytes(slide: Path, patch: int) -> int:
    """Compressed bytes of the level-0 tiles under the patch grid."""
    tif, page = _level0_page(slide)
    tiles_x = -(-page.imagewidth // page.tilewidth)
    rows = (page.imagelength // patch) * patch // page.tilelength
    cols = (page.imagewidth // patch) * patch // page.tilewidth
    total = sum(page.databytecounts[r * tiles_x + c] for r in range(rows) for c in range(cols))
    tif.close()
    return int(total)


def run_stage(name: str, slide: Path, patch: int) -> dict:
    if name == "decode":
        result = stage_decode(slide, patch)
    elif name == "direct":
        result = stage_direct(slide, patch)
    elif name in ("tiffslide", "openslide"):
        result = stage_backend(slide, patch, name)
    else:
        result = stage_tiler(slide, patch, 1 if name == "tiler-1t" else None)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _run_stage_process(name: str, slide: Path, patch_px: int) -> dict:
    """One stage in a fresh process, so its peak RSS is its own."""
    cmd = [sys.executable, __file__, str(slide), "--patch-px", str(patch_px), "--stage", name]
    # the tiler runs in a dask worker, which starts with wsi-pixelcam's malloc settings
    env = {**os.environ, **(WORKER_MALLOC_ENV if name.startswith("tiler") else {})}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # keep the stage's own error, not just its exit status
        sys.exit(f"stage {name} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("slide", type=Path)
    parser.add_argument("--patch-px", type=int, default=512)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of the bounds and the tiler (best kept)"
    )
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.slide, args.patch_px)))
        return
    # the bounds and the tiler run in turns, best of --repeats each, so a slow spell of a
    # shared machine lands on both sides of the ratio rather than on one
    runs: dict[str, list[dict]] = {name: [] for name in STAGES}
    for round_ in range(args.repeats):
        for name in STAGES:
            if round_ == 0 or name in REPEATED:
                runs[name].append(_run_stage_process(name, args.slide, args.patch_px))
    results = {
        name: {**min(done, key=lambda r: r["seconds"]), "all_seconds": [r["seconds"] for r in done]}
        for name, done in runs.items()
    }
    mb_per_patch = args.patch_px**2 * 3 / 1e6
    print(
        f"slide {args.slide} ({args.slide.stat().st_size / 1e6:.0f} MB), "
        f"{args.patch_px} px patches at level 0, {os.cpu_count()} cores"
    )
    print(f"{'stage':<10} {'patches/s':>10} {'MB/s':>8} {'peak RSS MB':>12}")
    for name, r in results.items():
        rate = r["patches"] / r["seconds"]
        print(f"{name:<10} {rate:>10.1f} {rate * mb_per_patch:>8.1f} {r['peak_rss_mb']:>12.0f}")
    rate = {k: v["patches"] / v["seconds"] for k, v in results.items()}
    src = source_bytes(args.slide, args.patch_px)
    summary = {
        "tiler / direct bound": rate["tiler"] / rate["direct"],
        "tiler-1t / direct bound": rate["tiler-1t"] / rate["direct"],
        "tiler / openslide loop": rate["tiler"] / rate["openslide"],
        "tiler / tiffslide loop": rate["tiler"] / rate["tiffslide"],
        "store bytes / source bytes": results["tiler"]["store_bytes"] / src,
    }
    for key, value in summary.items():
        print(f"{key:<28} {value:6.2f}")
    if args.json:
        args.json.write_text(json.dumps({"stages": results, "ratios": summary}, indent=1))


if __name__ == "__main__":
    main()
