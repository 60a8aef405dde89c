"""``build_report``: run directories in, a static HTML report folder out.

The folder holds everything a browser needs (pages, pictures, CSS and JS shipped with the
package), so it opens from a file:// URL or a zip with no server. Links to the large outputs
(GeoJSON, zarr) point into the run, relative to the report. ``index.html`` is written last: a
report folder with an index is a finished one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from wsi_pixelcam.atomic_write import replaced_when_done
from wsi_pixelcam.errors import OutputError, WsiPixelcamError
from wsi_pixelcam.report import images
from wsi_pixelcam.report.collect import READ_ERRORS, collect
from wsi_pixelcam.report.pages import (
    MODEL_PAGE,
    QUPATH_PAGE,
    SlideAssets,
    index_page,
    model_page,
    qupath_page,
    slide_page,
)
from wsi_pixelcam.report.records import SlideRecord
from wsi_pixelcam.store.outdir import ensure_writable_dir

logger = logging.getLogger(__name__)

STATIC_FILES = ("report.css", "report.js")
INDEX_THUMB_PX = 96
PAGE_IMAGE_PX = 700
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ReportResult:
    index: Path
    n_slides: int
    n_failed: int
    has_model_page: bool


def build_report(paths: Sequence[str | Path], out_dir: str | Path) -> ReportResult:
    """Write the report for the runs or output directories ``paths`` into ``out_dir``.

    Raises ManifestError when the paths hold no outputs, OutputError when ``out_dir`` cannot
    be written; anything missing or damaged inside a run is shown as such instead.
    """
    cohort = collect([Path(p) for p in paths])
    out = ensure_writable_dir(Path(out_dir))
    try:
        for name in STATIC_FILES:
            (out / name).write_bytes((files("wsi_pixelcam.report") / "static" / name).read_bytes())
        images.colour_legend(out / "legend.png")
        assets = {}
        for record, key in zip(cohort.slides, _page_keys(cohort.slides), strict=True):
            assets[record.slide_id] = _slide_assets(record, key, out)
            _write(out / assets[record.slide_id].page, slide_page(record, assets[record.slide_id]))
        has_model_page = bool(cohort.trainings or cohort.evaluations)
        if has_model_page:
            _write(out / MODEL_PAGE, model_page(cohort))
        _write(out / QUPATH_PAGE, qupath_page())
        index = _write(
            out / "index.html", index_page(cohort, assets, has_model_page=has_model_page)
        )
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the report ({exc.strerror or exc})") from exc
    n_failed = sum(s.status == "failed" for s in cohort.slides)
    return ReportResult(index, len(cohort.slides), n_failed, has_model_page)


def _write(path: Path, text: str) -> Path:
    with replaced_when_done(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _page_keys(slides: Sequence[SlideRecord]) -> list[str]:
    """File-name-safe, distinct names for the slides' pages and picture folders."""
    keys = []
    for record in slides:
        safe = SAFE_NAME.sub("_", record.slide_id)[:80]
        if safe != record.slide_id:
            safe += "-" + hashlib.sha1(record.slide_id.encode()).hexdigest()[:8]
        keys.append(safe)
    return keys


def _relative(target: Path | None, out: Path) -> str | None:
    if target is None:
        return None
    return Path(os.path.relpath(target.resolve(), out.resolve())).as_posix()


def _slide_assets(record: SlideRecord, key: str, out: Path) -> SlideAssets:
    """Make the slide's pictures under ``img/<key>/``; a picture that fails becomes a note."""
    folder = out / "img" / key
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    notes: list[str] = []
    made: dict[str, str | None] = dict.fromkeys(
        ("thumbnail_small", "overlay_small", "thumbnail", "overlay_outlined", "probability_map")
    )

    def attempt(name: str, make: Callable[[], Path]) -> None:
        try:
            made[name] = _relative(make(), out)
        except (WsiPixelcamError, *READ_ERRORS) as exc:
            notes.append(f"{name.replace('_', ' ')} could not be drawn: {exc}")
            logger.warning("%s: %s could not be drawn (%s)", record.slide_id, name, exc)

    f = record.files
    thumb, overlay, heatmap, probs, roi_class = (
        f.thumbnail, f.overlay, f.heatmap, f.class_probs, record.roi_class
    )  # fmt: skip
    rois = f.rois if record.n_rois else None
    if thumb is not None:
        attempt("thumbnail_small", lambda: images.preview(thumb, folder / "t.jpg", INDEX_THUMB_PX))
        attempt("thumbnail", lambda: images.readable(thumb, folder / "thumb.jpg", PAGE_IMAGE_PX))
    if overlay is not None:
        attempt("overlay_small", lambda: images.preview(overlay, folder / "o.jpg", INDEX_THUMB_PX))
        if heatmap is not None:
            attempt("overlay_outlined", lambda: images.outlined_overlay(
                overlay, rois, heatmap, record.roi_frame_qupath, folder / "overlay.jpg",
                PAGE_IMAGE_PX,
            ))  # fmt: skip
    if probs is not None and roi_class is not None:
        attempt("probability_map", lambda: images.probability_map(
            probs, f"prob:{roi_class}", thumb, folder / "probability.png", PAGE_IMAGE_PX
        ))  # fmt: skip
    return SlideAssets(
        page=f"slide-{key}.html",
        thumbnail_small=made["thumbnail_small"],
        overlay_small=made["overlay_small"],
        thumbnail=made["thumbnail"],
        overlay_outlined=made["overlay_outlined"],
        probability_map=made["probability_map"],
        probability_class=roi_class,
        links={
            "rois.geojson": _relative(f.rois, out),
            "tiles.geojson": _relative(f.tiles, out),
            "heatmap.zarr": _relative(f.heatmap, out),
            "summary.json": _relative(f.out_dir / "summary.json", out)
            if f.out_dir is not None and (f.out_dir / "summary.json").is_file()
            else None,
        },
        notes=tuple(notes),
    )
