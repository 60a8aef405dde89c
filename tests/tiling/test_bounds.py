"""No request, however absurd, takes the machine down: implausible resolutions and grids are
refused with one line, and resampling far past any pyramid level reads in bounded tiles."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_pixelcam.cli import main
from wsi_pixelcam.config import TileConfig
from wsi_pixelcam.errors import ConfigError, ManifestError, MppError
from wsi_pixelcam.geometry import choose_level
from wsi_pixelcam.jobs import jobs_from_manifest
from wsi_pixelcam.slide import open_slide
from wsi_pixelcam.tiling import patch_reader, tile_slide
from wsi_pixelcam.tiling.patch_reader import read_target_box

BIG_SIDE = 16384  # a flat 16k x 16k px slide: 0.8 GB of RGB if read at once


def _write_big_flat_tiff(path: Path, mpp: float = 0.25) -> Path:
    """Tile by tile, so writing it never holds the image: tissue colour with a gentle texture."""
    tile = 512
    yy, xx = np.mgrid[0:tile, 0:tile]
    base = np.stack(
        [196 + 20 * np.sin(xx / 37.0), 110 + 20 * np.cos(yy / 53.0), 168 + 0 * xx], axis=-1
    ).astype(np.uint8)

    def tiles():
        for _ in range((BIG_SIDE // tile) ** 2):
            yield base

    per_cm = 1e4 / mpp
    tifffile.imwrite(
        path, tiles(), shape=(BIG_SIDE, BIG_SIDE, 3), dtype=np.uint8, tile=(tile, tile),
        compression="jpeg", photometric="rgb", resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER", metadata=None,
    )  # fmt: skip
    return path


def test_override_mpp_is_checked_like_metadata(slides, tmp_path) -> None:
    cfg = TileConfig(target_mpp=2.0, patch_px=64)
    for absurd in (0.0, -1.0, 500.0):
        with pytest.raises(MppError, match=rf"--mpp .*: {absurd:g} um/px is not a plausible"):
            tile_slide(slides["flat"], cfg, tmp_path, mpp_override=absurd)
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_target_much_finer_than_level0_is_refused_naming_both(slides, tmp_path) -> None:
    cfg = TileConfig(target_mpp=0.1, patch_px=64)  # the slide is 0.25 um/px: 2.5x finer
    with pytest.raises(MppError, match=r"target_mpp 0.1 um/px is 2.5x finer .* \(0.25 um/px"):
        tile_slide(slides["flat"], cfg, tmp_path)
    twice = TileConfig(target_mpp=0.125, patch_px=64, min_tissue_frac=0.9)  # 2x: allowed
    assert tile_slide(slides["flat"], twice, tmp_path).n_patches > 0


def test_a_grid_too_large_for_memory_is_refused(slides, tmp_path, monkeypatch) -> None:
    from wsi_pixelcam.tiling import grid

    monkeypatch.setattr(grid, "MAX_PATCHES", 1000)
    cfg = TileConfig(target_mpp=0.5, patch_px=16, stride_px=8)
    with pytest.raises(ConfigError, match=r"flat.tif: more than 1,000 patches .* raise stride"):
        tile_slide(slides["flat"], cfg, tmp_path)


def test_manifest_mpp_is_checked_before_any_slide(slides, tmp_path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,mpp\n{slides['flat']},500\n")
    with pytest.raises(MppError, match=r"m.csv:2: mpp: 500 um/px is not a plausible"):
        jobs_from_manifest(manifest)
    manifest.write_text(f"path,mpp\n{slides['flat']},abc\n")
    with pytest.raises(ManifestError, match="not a number"):
        jobs_from_manifest(manifest)


def test_cli_typo_in_mpp_is_one_line_and_leaves_nothing(slides, tmp_path, capsys) -> None:
    """`--mpp 500` (for 0.5) once grew a dask worker to 23 GB until the kernel killed it."""
    out = tmp_path / "out"
    code = main(
        ["tile", str(slides["flat"]), "--mpp", "500", "--target-mpp", "2", "--out", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--mpp: 500 um/px is not a plausible" in err[0]
    assert not out.exists() or not list(out.iterdir())


def test_reduced_reads_are_seamless_and_close_to_a_direct_read(slides, monkeypatch) -> None:
    with open_slide(slides["flat"]) as reader:
        choice = choose_level(reader.level_downsamples, 0.25, 4.0, 0.02)  # factor 16, level 0
        assert choice.level == 0 and choice.resize_factor == pytest.approx(16.0)
        box = (10, 7, 200, 150)
        one_tile = read_target_box(reader, choice, box)
        monkeypatch.setattr(patch_reader, "REDUCE_TILE_PX", 96)  # many tiles, 96 = 12 x 8
        tiled = read_target_box(reader, choice, box)
        assert np.array_equal(one_tile, tiled)
        monkeypatch.setattr(patch_reader, "REDUCE_FROM", 1e9)  # the direct path
        direct = read_target_box(reader, choice, box)
    assert one_tile.shape == direct.shape == (143, 190, 3)
    assert np.abs(one_tile.astype(int) - direct.astype(int)).mean() < 2.0


def test_extreme_resampling_keeps_peak_memory_bounded(tmp_path) -> None:
    """A flat 16k px slide cut at 16 um/px (64x, no pyramid level near it): a direct read of
    the one block would need gigabytes; tiled box reduction keeps the process small."""
    slide = _write_big_flat_tiff(tmp_path / "big_flat.tif")
    # VmHWM, not ru_maxrss: Linux carries the parent's (pytest's) peak into ru_maxrss over exec
    script = textwrap.dedent(
        f"""
        import re
        from pathlib import Path
        from wsi_pixelcam.config import TileConfig
        from wsi_pixelcam.tiling import tile_slide
        result = tile_slide({str(slide)!r}, TileConfig(target_mpp=16.0, patch_px=32),
                            {str(tmp_path / "out")!r})
        peak_kib = re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1]
        print(result.n_patches, int(peak_kib) // 1024)
        """
    )
    # one glibc arena per reader thread would keep freed blocks and blur what is measured
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    n_patches, peak_mib = (int(v) for v in run.stdout.split())
    assert n_patches == (BIG_SIDE * 0.25 // 16 // 32) ** 2  # every patch is tissue
    assert peak_mib < 768, f"peak RSS {peak_mib} MiB (about 300-400 when bounded, 2,000 if not)"
