"""The report folder built from a real run: complete, escaped, relative, and rebuildable."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image
from report_slide_ids import BROKEN, FUTURE, KILLED, NORMAL

from wsi_pixelcam.cli import main
from wsi_pixelcam.report.build import build_report


@pytest.fixture(scope="module")
def report(cohort_run, tmp_path_factory):
    out = cohort_run.root / "report"
    result = build_report([cohort_run.root], out)
    return result, out


def _pages(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in out.glob("*.html")}


def test_index_slide_training_and_qupath_pages_are_written(report):
    result, out = report
    assert result.index == out / "index.html"
    assert (result.n_slides, result.n_failed, result.has_model_page) == (5, 1, True)
    pages = _pages(out)
    assert {"index.html", "model.html", "qupath.html"} <= set(pages)
    assert len([n for n in pages if n.startswith("slide-")]) == 5
    assert (out / "report.js").is_file() and (out / "report.css").is_file()


def test_user_strings_are_escaped(report):
    _, out = report
    index = (out / "index.html").read_text()
    assert "tumour&lt;i&gt;&amp;1" in index and "<i>" not in index
    assert "UnsupportedSlideError: " in index


def test_every_local_reference_exists(report):
    _, out = report
    for name, html in _pages(out).items():
        for target in re.findall(r'(?:src|href)="([^"#:]+)"', html):
            assert (out / unquote(target)).exists(), f"{name}: {target}"


def test_pictures_are_made_for_what_exists_and_missing_is_marked(report):
    _, out = report
    pages = _pages(out)
    tumour = next(html for n, html in pages.items() if "tumour" in n)
    images = re.findall(r'<img src="([^"]+)"', tumour)
    assert any("overlay.jpg" in s for s in images) and any("probability.png" in s for s in images)
    overlay = Image.open(out / unquote(next(s for s in images if "overlay.jpg" in s)))
    assert max(overlay.size) >= 600  # enlarged to a readable size
    broken = pages[f"slide-{BROKEN}.html"]
    assert "UnsupportedSlideError" in broken and 'class="missing"' in broken
    assert "killed run" in pages[f"slide-{KILLED}.html"]
    assert "version 99" in pages[f"slide-{FUTURE}.html"]
    assert f"slide-{NORMAL}.html" in pages


def test_training_page_has_curves_split_config_fingerprint_and_evaluation(report, cohort_run):
    _, out = report
    model = (out / "model.html").read_text()
    assert model.count("<svg") == 3 and "PixelCAM loss" in model and "teacher CAM" in model
    assert "Split by slide" in model and "Config used" in model
    assert "Evaluation: PixelCAM vs teacher CAM" in model and "PxAP" in model
    assert re.search(r"Weights fingerprint</th><td><code>[0-9a-f]{16}<", model)


def test_the_cli_rebuilds_over_an_old_report(report, cohort_run, capsys):
    _, out = report
    assert main(["report", str(cohort_run.root / "infer"), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "report of 5 slide(s) (1 failed)" in line and line.strip().endswith("index.html")
