"""The report in a real headless Chromium: pictures load, links resolve, sorting, filtering
and paging work, and no page logs an error.

Skipped, saying why, where playwright or a Chromium executable is missing (``.ci/run``
installs Debian's ``chromium``; ``WSI_PIXELCAM_CHROMIUM`` names another executable).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from report_slide_ids import BROKEN, NORMAL, TUMOUR

from wsi_pixelcam.report.build import build_report
from wsi_pixelcam.report.pages import PAGE_SIZE

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
CHROMIUM = os.environ.get("WSI_PIXELCAM_CHROMIUM") or next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
)
if CHROMIUM is None:
    pytest.skip(
        "no Chromium executable (apt-get install chromium, or set WSI_PIXELCAM_CHROMIUM)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page that records console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.errors = []
    tab.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    yield tab
    context.close()


@pytest.fixture(scope="module")
def report(cohort_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "report"
    build_report([cohort_run.root], out)
    return out


def _open(page, path: Path) -> None:
    page.goto(path.as_uri())
    page.wait_for_load_state("load")


def _images_loaded(page) -> list[str]:
    """Sources of the visible images that did not load (each scrolled into view first)."""
    broken = []
    for image in page.locator("img:visible").all():
        image.scroll_into_view_if_needed()
        image.evaluate("img => img.decode().catch(() => null)")
        if image.evaluate("img => img.complete && img.naturalWidth") == 0:
            broken.append(image.get_attribute("src"))
    return broken


def _local_targets(page) -> list[Path]:
    hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
    return [Path(unquote(urlparse(h).path)) for h in hrefs if h.startswith("file:")]


def test_every_page_loads_its_images_and_links_without_errors(page, report):
    pages, seen = [report / "index.html"], set()
    while pages:
        current = pages.pop()
        if current in seen:
            continue
        seen.add(current)
        _open(page, current)
        assert _images_loaded(page) == [], current.name
        for target in _local_targets(page):
            assert target.exists(), f"{current.name} links to missing {target}"
            if target.suffix == ".html" and target.parent == report:
                pages.append(target)
        assert page.errors == [], current.name
    assert {"index.html", "model.html", "qupath.html"} <= {p.name for p in seen}
    assert len([p for p in seen if p.name.startswith("slide-")]) == 5


def _visible_slides(page) -> list[str]:
    return page.eval_on_selector_all(
        "#slides tbody tr:not([hidden])", "rows => rows.map(r => r.cells[0].dataset.value)"
    )


def test_filters_and_sorting(page, report):
    _open(page, report / "index.html")
    assert len(_visible_slides(page)) == 5
    page.select_option("#filter-status", "failed")
    assert _visible_slides(page) == [BROKEN]
    page.select_option("#filter-status", "")
    page.select_option("#filter-class", "Tumor")
    assert _visible_slides(page) == [TUMOUR]
    page.select_option("#filter-class", "")
    page.fill("#filter-text", "SLIDE")
    assert _visible_slides(page) == [NORMAL]
    page.fill("#filter-text", "")
    probability = page.locator("th", has_text="Probability")
    probability.click()
    assert _visible_slides(page)[-2:] == [TUMOUR, NORMAL]  # 0.7, 0.9; empty cells first
    probability.click()
    assert _visible_slides(page)[:2] == [NORMAL, TUMOUR]
    assert page.errors == []


def test_a_long_index_is_paged(page, cohort_run, tmp_path):
    """Copies of a real slide output under other ids: one page at a time, lazy pictures."""
    infer = tmp_path / "infer"
    n = PAGE_SIZE + 7
    for i in range(n):
        folder = shutil.copytree(cohort_run.root / "infer" / NORMAL, infer / f"s{i:03d}")
        summary = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps({**summary, "slide_id": f"s{i:03d}"}))
    out = tmp_path / "report"
    build_report([infer], out)
    _open(page, out / "index.html")
    assert len(_visible_slides(page)) == PAGE_SIZE
    assert page.inner_text("#page-info") == f"{n} of {n} slides, page 1 of 2"
    page.click("#page-next")
    assert _visible_slides(page) == [f"s{i:03d}" for i in range(PAGE_SIZE, n)]
    assert _images_loaded(page) == []
    assert page.is_disabled("#page-next") and page.errors == []
