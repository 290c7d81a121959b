"""Charts drawn on the server as inline SVG: no script, nothing from another site, nothing for the CSP to allow.

Each chart is an image with a title and a description (role="img"); its figures are also on the page as a
table (the templates put one under each chart), which is what a screen reader or a keyboard user reads.
Colours are presentation attributes, not style attributes, so the strict CSP has nothing to refuse.
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 16, 40
INK = "#222222"  # text and axes (contrast well above 4.5:1 on white)
GRID = "#d0d0d0"
# Two series told apart by colour and by dash, for those who cannot tell the colours apart.
SERIES_STYLES = (("#1f5fa8", ""), ("#b3470a", "6 4"))


@dataclass(frozen=True)
class Series:
    """One line (or the bars) of a chart: a name and a value per label (None: no value that day)."""

    name: str
    values: Sequence[float | None]


def _nice_top(peak: float) -> float:
    # The axis ends at 1, 2, 2.5 or 5 times a power of ten at or above the peak, so its ticks read easily.
    if peak <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(peak))
    for step in (1, 2, 2.5, 5, 10):
        if peak <= step * power:
            return float(step * power)
    return float(10 * power)


def _number(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def _frame(chart_id: str, title: str, description: str, labels: Sequence[dt.date], top: float, unit: str) -> list[str]:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc" '
             f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
             f'<desc id="{escape(chart_id)}-desc">{escape(description)}</desc>']
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="{GRID}" '
                     f'stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="12" fill="{INK}">'
                     f'{escape(_number(value))}{escape(unit)}</text>')
    step = max(1, math.ceil(len(labels) / 8))  # at most eight dates under the axis
    slot = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    for i in range(0, len(labels), step):
        x = LEFT + slot * (i + 0.5)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle" font-size="12" '
                     f'fill="{INK}">{escape(labels[i].strftime("%d %b"))}</text>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="{INK}" '
                 f'stroke-width="1"/>')
    return parts


def bar_chart(chart_id: str, title: str, description: str, labels: Sequence[dt.date], series: Series,
              unit: str = "") -> Markup:
    """A bar per label."""
    values = [v or 0.0 for v in series.values]
    top = _nice_top(max(values, default=0.0))
    parts = _frame(chart_id, title, description, labels, top, unit)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    colour = SERIES_STYLES[0][0]
    for i, value in enumerate(values):
        h = plot_h * value / top
        parts.append(f'<rect x="{LEFT + slot * i + slot * 0.15:.1f}" y="{TOP + plot_h - h:.1f}" '
                     f'width="{slot * 0.7:.1f}" height="{h:.1f}" fill="{colour}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(chart_id: str, title: str, description: str, labels: Sequence[dt.date], series: Sequence[Series],
               unit: str = "") -> Markup:
    """A line per series, broken where a label has no value, with a dot on each value and a legend."""
    top = _nice_top(max((v for s in series for v in s.values if v is not None), default=0.0))
    parts = _frame(chart_id, title, description, labels, top, unit)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    for n, s in enumerate(series):
        colour, dash = SERIES_STYLES[n % len(SERIES_STYLES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        run: list[str] = []
        points = [(LEFT + slot * (i + 0.5), TOP + plot_h - plot_h * v / top) if v is not None else None
                  for i, v in enumerate(s.values)]
        for point in [*points, None]:
            if point is not None:
                run.append(f"{point[0]:.1f},{point[1]:.1f}")
                continue
            if len(run) > 1:
                parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" '
                             f'stroke-width="2"{dash_attr}/>')
            run = []
        for point in points:
            if point is not None:
                parts.append(f'<circle cx="{point[0]:.1f}" cy="{point[1]:.1f}" r="2.5" fill="{colour}"/>')
        x = LEFT + 10 + n * 200
        parts.append(f'<line x1="{x}" y1="{HEIGHT - 8}" x2="{x + 24}" y2="{HEIGHT - 8}" stroke="{colour}" '
                     f'stroke-width="2"{dash_attr}/>')
        parts.append(f'<text x="{x + 30}" y="{HEIGHT - 4}" font-size="12" fill="{INK}">{escape(s.name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
