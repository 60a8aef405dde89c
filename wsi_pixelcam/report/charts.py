"""Small per-epoch line charts as inline SVG: no plotting library, nothing to load, crisp at
any zoom, and they travel inside the HTML page."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f6fb4", "#d4572a", "#2f9e44", "#8d44ad")
WIDTH, HEIGHT = 540, 240
LEGEND_W = 130
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 48, 12 + LEGEND_W, 30, 34


@dataclass(frozen=True)
class Series:
    """One line: its legend name and (x, y) points in x order."""

    name: str
    points: tuple[tuple[float, float], ...]


def nice_ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values covering [low, high] (steps of 1, 2 or 5 times a power of ten);
    ``integer`` keeps steps whole (epochs)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, round(step))
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"


def line_chart(title: str, series: Sequence[Series], *, x_label: str = "epoch") -> str:
    """An SVG chart of ``series``, or a short note when none has a point."""
    drawn = [s for s in series if s.points]
    if not drawn:
        return f'<p class="missing">{escape(title)}: no values logged</p>'
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    x_ticks = nice_ticks(min(xs), max(xs), integer=True)
    y_ticks = nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def px(x: float) -> float:
        return MARGIN_LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return MARGIN_TOP + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{MARGIN_LEFT}" y="16" class="chart-title">{escape(title)}</text>',
        f'<text x="{WIDTH - MARGIN_RIGHT}" y="{HEIGHT - 4}" text-anchor="end">'
        f"{escape(x_label)}</text>",
    ]
    for y in y_ticks:
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{py(y):.1f}" '
            f'y2="{py(y):.1f}" class="grid"/><text x="{MARGIN_LEFT - 4}" y="{py(y) + 4:.1f}" '
            f'text-anchor="end">{_label(y)}</text>'
        )
    for x in x_ticks:
        parts.append(
            f'<text x="{px(x):.1f}" y="{MARGIN_TOP + plot_h + 14}" text-anchor="middle">'
            f"{_label(x)}</text>"
        )
    for index, line in enumerate(drawn):
        colour = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line.points)
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        parts.extend(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>'
            for x, y in line.points
        )
        legend_y = MARGIN_TOP + 4 + 14 * index
        parts.append(
            f'<rect x="{WIDTH - LEGEND_W}" y="{legend_y - 8}" width="10" height="10" '
            f'fill="{colour}"/><text x="{WIDTH - LEGEND_W + 14}" y="{legend_y + 1}">'
            f"{escape(line.name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
