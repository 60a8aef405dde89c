"""The report's HTML pages as strings: records and asset paths in, markup out.

Every string that comes from a run (slide ids, class names, error lines, paths) goes through
``html.escape``; every link is relative to the report folder and URL-quoted, so the report
opens from a file:// URL or an unpacked zip.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from urllib.parse import quote

from wsi_pixelcam import __version__
from wsi_pixelcam.report.charts import Series, line_chart
from wsi_pixelcam.report.records import (
    Cohort,
    EvaluationRecord,
    MapScores,
    SlideRecord,
    TrainingRecord,
)

PAGE_SIZE = 50
"""Index rows shown per page: a 1,000-slide index loads only one page of thumbnails."""

MODEL_PAGE = "model.html"
QUPATH_PAGE = "qupath.html"


@dataclass(frozen=True)
class SlideAssets:
    """What the report holds for one slide, as paths relative to the report folder."""

    page: str
    thumbnail_small: str | None = None
    overlay_small: str | None = None
    thumbnail: str | None = None
    overlay_outlined: str | None = None
    probability_map: str | None = None
    probability_class: str | None = None
    links: Mapping[str, str | None] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def href(path: str) -> str:
    """A relative path as an attribute-safe URL."""
    return escape(quote(path, safe="/.-_~"), quote=True)


def _num(value: float | int | None, spec: str = ".3g") -> str:
    return "" if value is None else format(value, spec)


def _page(title: str, body: str, *, script: bool = False) -> str:
    js = '<script src="report.js" defer></script>' if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title>'
        f'<link rel="stylesheet" href="report.css">{js}</head>\n<body>\n{body}\n'
        f"<footer>wsi-pixelcam {escape(__version__)}, "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}</footer>\n</body></html>\n"
    )


def _img(src: str | None, alt: str, *, width: int | None = None, lazy: bool = False) -> str:
    if src is None:
        return f'<span class="missing">no {escape(alt)}</span>'
    size = f' width="{width}"' if width else ""
    loading = ' loading="lazy"' if lazy else ""
    return f'<img src="{href(src)}" alt="{escape(alt)}"{size}{loading}>'


def _mm2(um2: float | None) -> str:
    return "" if um2 is None else f"{um2 / 1e6:.3f}"


def _seconds(record: SlideRecord) -> float | None:
    parts = [s for s in (record.tile_seconds, record.infer_seconds) if s is not None]
    return sum(parts) if parts else None


def _status_class(record: SlideRecord) -> str:
    return "status-" + record.status.replace(" ", "-")


def _cell(text: str, value: object, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f'<td data-value="{escape(str(value), quote=True)}"{attr}>{text}</td>'


# -- index ------------------------------------------------------------------------------


INDEX_COLUMNS = (
    ("Slide", "text"),
    ("Thumbnail", ""),
    ("Overlay", ""),
    ("Predicted class", "text"),
    ("Probability", "num"),
    ("ROIs", "num"),
    ("ROI area (mm²)", "num"),
    ("Tiling", "text"),
    ("Inference", "text"),
    ("Time (s)", "num"),
    ("Error / notes", "text"),
)


def _index_row(record: SlideRecord, assets: SlideAssets, position: int) -> str:
    slide = escape(record.slide_id)
    seconds = _seconds(record)
    problems = [record.error] if record.error else []
    problems += [*record.notes, *assets.notes]
    cells = [
        _cell(f'<a href="{href(assets.page)}">{slide}</a>', record.slide_id),
        f"<td>{_img(assets.thumbnail_small, 'thumbnail', lazy=True)}</td>",
        f"<td>{_img(assets.overlay_small, 'overlay', lazy=True)}</td>",
        _cell(escape(record.predicted_class or ""), record.predicted_class or ""),
        _cell(_num(record.probability, ".3f"), _num(record.probability, ".6f")),
        _cell(_num(record.n_rois, "d"), _num(record.n_rois, "d")),
        _cell(_mm2(record.roi_area_um2), _num(record.roi_area_um2, ".1f")),
        _cell(escape(record.tile_status or "-"), record.tile_status or ""),
        _cell(escape(record.infer_status), record.infer_status, _status_class(record)),
        _cell(_num(seconds, ".1f"), _num(seconds, ".3f")),
        _cell("<br>".join(escape(p) for p in problems), " ".join(problems), "error"),
    ]
    hidden = " hidden" if position >= PAGE_SIZE else ""
    return (
        f'<tr data-status="{escape(record.status, quote=True)}" '
        f'data-class="{escape(record.predicted_class or "", quote=True)}"{hidden}>'
        + "".join(cells)
        + "</tr>"
    )


def _options(values: Iterable[str], label: str) -> str:
    opts = [f'<option value="">all {escape(label)}</option>']
    opts += [f'<option value="{escape(v, quote=True)}">{escape(v)}</option>' for v in values]
    return "".join(opts)


def index_page(cohort: Cohort, assets: Mapping[str, SlideAssets], *, has_model_page: bool) -> str:
    slides = cohort.slides
    statuses = Counter(s.status for s in slides)
    classes = sorted({s.predicted_class for s in slides if s.predicted_class})
    counts = ", ".join(f"{n} {escape(k)}" for k, n in sorted(statuses.items()))
    nav = [f'<a href="{QUPATH_PAGE}">open the outputs in QuPath</a>']
    if has_model_page:
        nav.insert(0, f'<a href="{MODEL_PAGE}">training and evaluation</a>')
    header = "".join(f"<th data-sort={kind!r}>{escape(name)}</th>" for name, kind in INDEX_COLUMNS)
    rows = "\n".join(_index_row(s, assets[s.slide_id], i) for i, s in enumerate(slides))
    inputs = ", ".join(f"<code>{escape(str(p))}</code>" for p in cohort.inputs)
    body = f"""<h1>wsi-pixelcam cohort report</h1>
<p>{len(slides)} slide(s): {counts or "none"}. From {inputs}.</p>
<nav>{" | ".join(nav)}</nav>
<div class="controls">
<label>Status <select id="filter-status">{_options(sorted(statuses), "statuses")}</select></label>
<label>Predicted class <select id="filter-class">{_options(classes, "classes")}</select></label>
<label>Slide <input id="filter-text" type="search" placeholder="slide id contains"></label>
<button id="page-prev" type="button">previous</button>
<span id="page-info"></span>
<button id="page-next" type="button">next</button>
</div>
<table id="slides" data-page-size="{PAGE_SIZE}"><thead><tr>{header}</tr></thead>
<tbody>
{rows}
</tbody></table>"""
    return _page("wsi-pixelcam cohort report", body, script=True)


# -- slide pages --------------------------------------------------------------------------


def _row(name: str, value: str) -> str:
    return f"<tr><th>{escape(name)}</th><td>{value}</td></tr>"


def _link(name: str, target: str | None) -> str:
    if target is None:
        return f'<li>{escape(name)}: <span class="missing">missing</span></li>'
    return f'<li><a href="{href(target)}">{escape(name)}</a></li>'


def slide_page(record: SlideRecord, assets: SlideAssets) -> str:
    probs = ", ".join(f"{escape(k)} {v:.3f}" for k, v in record.class_probs.items())
    threshold = ""
    if record.threshold is not None:
        threshold = f"{record.threshold:.3f} ({escape(record.threshold_source or 'unknown')})"
    timings = ", ".join(f"{escape(k)} {v:.1f} s" for k, v in record.timings_s.items())
    facts = [
        _row("Tiling", escape(record.tile_status or "no tile status table")),
        _row(
            "Inference",
            f'<span class="{_status_class(record)}">{escape(record.infer_status)}</span>',
        ),
        _row("Predicted class", escape(record.predicted_class or "")),
        _row("Class probabilities", probs),
        _row("Patches", _num(record.n_patches, "d")),
        _row(f"ROIs ({escape(record.roi_class or 'ROI class')})", _num(record.n_rois, "d")),
        _row("ROI area (mm²)", _mm2(record.roi_area_um2)),
        _row("Threshold", threshold),
        _row(
            "Model",
            f"{escape(record.model_name or '')} "
            f"<code>{escape(record.model_fingerprint or '')}</code>",
        ),
        _row("Timings", timings),
    ]
    problems = [p for p in (record.tile_error, record.infer_error) if p]
    problems += [*record.notes, *assets.notes]
    problem_html = "".join(f'<p class="error">{escape(p)}</p>' for p in problems)
    links = "".join(_link(name, target) for name, target in assets.links.items())
    legend = '<img src="legend.png" alt="colour scale from 0 to 1" class="legend"> 0 to 1'
    prob_title = f"Probability of {escape(assets.probability_class or 'the ROI class')}"
    body = f"""<nav><a href="index.html">all slides</a> | <a href="{QUPATH_PAGE}">QuPath</a></nav>
<h1>{escape(record.slide_id)}</h1>
{problem_html}
<table class="facts">{"".join(facts)}</table>
<h2>Files</h2><ul>{links}<li><a href="{QUPATH_PAGE}">how to open them in QuPath</a></li></ul>
<div class="figures">
<figure>{_img(assets.thumbnail, "slide thumbnail")}<figcaption>Slide</figcaption></figure>
<figure>{_img(assets.overlay_outlined, "heatmap overlay with ROI outlines")}
<figcaption>Foreground heatmap with the ROI outlines (cyan); {legend}</figcaption></figure>
<figure>{_img(assets.probability_map, "class-probability map")}
<figcaption>{prob_title} per patch; {legend}</figcaption></figure>
</div>"""
    return _page(f"{record.slide_id} - wsi-pixelcam", body)


# -- training and evaluation ----------------------------------------------------------------


STAGE_NAMES = {"teacher": "teacher", "pixelcam": "PixelCAM"}


def _series(training: TrainingRecord, key: str, label: str, stages: Sequence[str]) -> list[Series]:
    out = []
    for stage in stages:
        points = tuple(
            (float(e.epoch), e.values[key])
            for e in training.epochs
            if e.stage == stage and key in e.values
        )
        out.append(Series(f"{STAGE_NAMES.get(stage, stage)} {label}".strip(), points))
    return out


def _training_section(training: TrainingRecord) -> str:
    both = ("teacher", "pixelcam")
    charts = [
        line_chart("Training loss", _series(training, "loss", "loss", both)),
        line_chart(
            "Accuracy (%)",
            _series(training, "train_accuracy", "train", both)
            + _series(training, "val_accuracy", "val", both),
        ),
        line_chart(
            "Validation PxAP (%)",
            _series(training, "val_pxap_cam", "CAM", ("teacher",))
            + _series(training, "val_pxap_pixel", "map", ("pixelcam",)),
        ),
    ]
    threshold = (
        f"{training.val_threshold:.3f} (best tau on the validation slides)"
        if training.val_threshold is not None
        else "none recorded (no validation masks): infer uses its configured threshold"
    )
    facts = [
        _row("Run", f"<code>{escape(str(training.run_dir))}</code>"),
        _row("Model", f"<code>{escape(str(training.model_path or 'not chosen yet'))}</code>"),
        _row("Weights fingerprint", f"<code>{escape(training.model_fingerprint or '')}</code>"),
        _row("Validation threshold", escape(threshold)),
    ]
    notes = "".join(f'<p class="error">{escape(n)}</p>' for n in training.notes)
    split = ""
    if training.split is not None:
        s = training.split
        rows = "".join(
            f"<tr><td>{escape(name)}</td><td>{t}</td><td>{v}</td></tr>"
            for name, t, v in zip(s.class_names, s.train_counts, s.val_counts, strict=False)
        )
        split = (
            "<h3>Split by slide</h3><table><tr><th>class</th><th>training patches</th>"
            f"<th>validation patches</th></tr>{rows}</table>"
            f"<p>Training slides ({len(s.train_slides)}): "
            f"{escape(', '.join(s.train_slides))}</p>"
            f"<p>Validation slides ({len(s.val_slides)}): "
            f"{escape(', '.join(s.val_slides) or 'none')}"
            f"{'' if s.val_has_masks else ' (no ROI masks)'}</p>"
        )
    config = ""
    if training.config:
        dumped = json.dumps(dict(training.config), indent=2, sort_keys=True, default=str)
        config = f"<details><summary>Config used</summary><pre>{escape(dumped)}</pre></details>"
    return (
        f'<h2>Training</h2>{notes}<table class="facts">{"".join(facts)}</table>'
        f'<div class="figures">{"".join(charts)}</div>{split}{config}'
    )


SCORE_NAMES = (("dice_fg", "Dice"), ("iou_fg", "IoU"), ("miou", "mIoU"))


def _score(scores: MapScores | None, which: str, key: str = "") -> float | None:
    """PxAP (``which="pxap"``) or a score at the fixed or the validation tau."""
    if scores is None:
        return None
    if which == "pxap":
        return scores.pxap
    table = scores.fixed if which == "fixed" else scores.at_val_tau
    return None if table is None else table.get(key)


def _evaluation_section(ev: EvaluationRecord) -> str:
    maps = (ev.pixelcam, ev.cam)

    def cells(which: str, key: str = "") -> str:
        return "".join(f"<td>{_num(_score(m, which, key), '.1f')}</td>" for m in maps)

    rows = f"<tr><th>PxAP</th>{cells('pxap')}</tr>"
    reference = ev.pixelcam or ev.cam
    if reference is not None:
        for which, tau in (("fixed", reference.fixed_tau), ("validation", reference.val_tau)):
            if tau is not None:
                rows += "".join(
                    f"<tr><th>{name} at {which} tau {tau:.3f}</th>{cells(which, key)}</tr>"
                    for key, name in SCORE_NAMES
                )
    return (
        f"<h3>{escape(ev.source.name)}</h3><p><code>{escape(ev.checkpoint)}</code> "
        f"({escape(ev.stage)}) on {ev.n_stores} store(s), {ev.n_patches} patches: "
        f"accuracy {ev.accuracy:.1f}%</p><table><tr><th></th><th>PixelCAM map</th>"
        f"<th>teacher {escape(ev.cam_method)}</th></tr>{rows}</table>"
    )


def model_page(cohort: Cohort) -> str:
    sections = [_training_section(t) for t in cohort.trainings]
    if cohort.evaluations:
        sections.append(
            "<h2>Evaluation: PixelCAM vs teacher CAM</h2>"
            + "".join(_evaluation_section(e) for e in cohort.evaluations)
        )
    used = Counter(
        (s.threshold, s.threshold_source) for s in cohort.slides if s.threshold is not None
    )
    if used:
        items = "".join(
            f"<li>{t:.3f} ({escape(src or 'unknown')}): {n} slide(s)</li>"
            for (t, src), n in sorted(used.items(), key=lambda kv: str(kv[0]))
        )
        sections.append(f"<h2>Thresholds the inferred slides used</h2><ul>{items}</ul>")
    body = '<nav><a href="index.html">all slides</a></nav><h1>Training and evaluation</h1>'
    return _page("training and evaluation - wsi-pixelcam", body + "".join(sections))


QUPATH_BODY = """<nav><a href="index.html">all slides</a></nav>
<h1>Opening the outputs in QuPath</h1>
<ol>
<li>Open the slide itself in QuPath (<em>File &gt; Open</em>), the same file that was inferred.</li>
<li>Drag the slide's <code>rois.geojson</code> onto the viewer, or use <em>File &gt; Import
objects from file</em>: each region of interest becomes an annotation of the ROI class, with
its area and mean and maximum probability as measurements.</li>
<li>For the per-patch picture, import <code>tiles.geojson</code> (or its <code>.gz</code>) the
same way. Every tile carries a <code>prob</code> measurement; <em>Measure &gt; Show
measurement maps</em> colours the tiles by it, which shows the heatmap inside QuPath.</li>
<li>The full-resolution map is <code>heatmap.zarr</code> (OME-Zarr), for napari or Python; the
ROIs are its contours at the threshold shown on each slide's page.</li>
</ol>
<p>Coordinates are in QuPath's frame (level-0 pixels, minus the slide's bounds offset where the
format has one), so the objects land where they belong without any shift.</p>"""


def qupath_page() -> str:
    return _page("QuPath - wsi-pixelcam", QUPATH_BODY)
