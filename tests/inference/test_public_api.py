"""The README's Python example runs as written, on the bundled slide and a tiny checkpoint."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tiny_pixelcam as tiny

import wsi_pixelcam

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_public_names_load_lazily_and_resolve():
    code = "import sys, wsi_pixelcam; print('torch' in sys.modules, 'zarr' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.split() == ["False", "False"]  # importing the package loads neither
    for name in wsi_pixelcam.__all__:
        assert getattr(wsi_pixelcam, name) is not None
    assert not hasattr(wsi_pixelcam, "PatchStoreWriter")  # internal: not part of the API


def test_readme_python_example_runs(tmp_path, cmu_slide):
    shutil.copy(cmu_slide, tmp_path / "slide.svs")
    tiny.save(tmp_path / "model.pt", tiny.constant_model(0.8, (0.3, 0.7)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _readme_example()],
        cwd=tmp_path, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("Tumor {")  # tiny models predict 'Tumor'
    # a constant 0.8 map over the tissue: its regions are the tissue's pieces
    n_rois = int(lines[-1].split()[-2])
    regions = wsi_pixelcam.read_qupath_annotations(tmp_path / "infer" / "slide" / "rois.geojson")
    assert n_rois == len(regions) >= 1
