"""Small server-rendered SVG charts for the admin dashboards and the tenants' pages: no
JavaScript, no CDN.

Hand-written because two chart shapes (time series and horizontal bars) are all the pages
draw, and a vendored chart library would be larger than this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

FONT = 'font-family="system-ui, sans-serif" font-size="11" fill="#444"'


def _nice_ceiling(value: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def _format(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.0f}%"
    if abs(value) >= 1_000_000:
        text = f"{value / 1_000_000:.1f}M"
    elif abs(value) >= 1000:
        text = f"{value / 1000:.1f}k"
    elif abs(value) >= 10 or value == int(value):
        text = f"{value:.0f}"
    else:
        text = f"{value:.2f}"
    return f"{text}{(' ' + unit) if unit else ''}"


@dataclass(frozen=True)
class Series:
    """One line of a time-series chart; `dash` (an SVG stroke-dasharray) tells lines apart without colour."""

    label: str
    points: Sequence[tuple[datetime, float | None]]
    color: str = "#2563eb"
    dash: str = ""


def line_chart(
    points: Sequence[tuple[datetime, float | None]],
    *,
    title: str,
    unit: str = "",
    color: str = "#2563eb",
    width: int = 640,
    height: int = 200,
    time_format: str = "%m-%d",
) -> SafeString:
    """A time series: one polyline (gaps where a value is None), y from 0, three x labels."""
    return lines_chart(
        [Series(title, points, color)], title=title, unit=unit, width=width, height=height, time_format=time_format
    )


def lines_chart(
    series: Sequence[Series],
    *,
    title: str,
    description: str = "",
    unit: str = "",
    y_max: float | None = None,
    width: int = 640,
    height: int = 200,
    time_format: str = "%m-%d",
) -> SafeString:
    """Time series on one time axis (every series has the same instants, evenly spaced), y from 0.

    With several series a legend names them. `description` becomes the SVG's <desc>: the
    figures a reader cannot see, for screen readers. `y_max` fixes the top of the y axis
    (1.0 for a rate); by default it is a round number above the largest value.
    """
    left, right, top, bottom = 56, 12, 24, 26
    if len(series) > 1:
        top += 16  # the legend's row
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for line in series for _, v in line.points if v is not None]
    ceiling = y_max or (_nice_ceiling(max(values)) if values else 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    if description:
        parts.append(f"<desc>{escape(description)}</desc>")
    parts.append(f'<text x="{left}" y="14" {FONT} font-weight="600">{escape(title)}</text>')
    if len(series) > 1:
        x = left
        for line in series:
            dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
            parts.append(f'<line x1="{x}" x2="{x + 18}" y1="31" y2="31" stroke="{line.color}" stroke-width="2"{dash}/>')
            parts.append(f'<text x="{x + 22}" y="35" {FONT}>{escape(line.label)}</text>')
            x += 34 + 7 * len(line.label)
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{escape(_format(ceiling * i / 4, unit))}</text>'
        )
    instants = [moment for moment, _ in series[0].points] if series else []
    if not instants:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" {FONT}>no data</text></svg>')
        return mark_safe("".join(parts))
    n = len(instants)

    def x_of(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    for line in series:
        dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
        segments: list[list[str]] = [[]]
        for i, (_, value) in enumerate(line.points):
            if value is None:
                segments.append([])
                continue
            y = top + plot_h - plot_h * min(value / ceiling, 1.0)
            segments[-1].append(f"{x_of(i):.1f},{y:.1f}")
        for segment in segments:
            if len(segment) > 1:
                parts.append(f'<polyline fill="none" stroke="{line.color}" stroke-width="2"{dash} points="{" ".join(segment)}"/>')
            elif len(segment) == 1:
                x, y = segment[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{line.color}"/>')
    for i in sorted({0, n // 2, n - 1}):
        anchor = "end" if i == n - 1 and n > 1 else "middle"  # the last label ends at the plot's edge, not past it
        parts.append(
            f'<text x="{x_of(i):.1f}" y="{height - 8}" text-anchor="{anchor}" '
            f"{FONT}>{escape(instants[i].strftime(time_format))}</text>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def bar_chart(
    items: Sequence[tuple[str, float]], *, title: str, unit: str = "", color: str = "#0f766e", width: int = 640
) -> SafeString:
    """Horizontal bars, largest first as given, each labelled with its value."""
    row, left, top = 22, 160, 24
    height = top + row * max(len(items), 1) + 8
    ceiling = max((value for _, value in items), default=0) or 1
    plot_w = width - left - 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="0" y="14" {FONT} font-weight="600">{escape(title)}</text>',
    ]
    if not items:
        parts.append(f'<text x="{left}" y="{top + 14}" {FONT}>no data</text>')
    for i, (label, value) in enumerate(items):
        y = top + i * row
        bar = plot_w * value / ceiling
        shown = label if len(label) <= 24 else label[:23] + "…"
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" {FONT}>{escape(shown)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{bar:.1f}" height="{row - 8}" fill="{color}" rx="2"/>')
        parts.append(f'<text x="{left + bar + 6:.1f}" y="{y + 14}" {FONT}>{escape(_format(value, unit))}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


# ---------------------------------------------------------------------------- tenant-facing charts
#
# The model pages' charts carry a <title> and a <desc> (read by screen readers with the
# image's name), and every page that shows one also shows the same numbers in a table.
DARK = "#1f2937"
ACCENT = "#0b5cad"
ALERT = "#a4161a"
REFERENCE_FILL = "#d5dde8"
# Narrower than the admin's charts and a point larger: they scale down to a phone's width.
TENANT_FONT = 'font-family="system-ui, sans-serif" font-size="12" fill="#1f2937"'


def _svg_open(*, width: int, height: int, title: str, description: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title><desc>{escape(description)}</desc>",
        f'<text x="0" y="14" {TENANT_FONT} font-weight="600">{escape(title)}</text>',
    ]


def _label(text: str, limit: int = 16) -> str:
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def flagged_bar_chart(
    items: Sequence[tuple[str, float | None, bool]],
    *,
    title: str,
    description: str,
    flag_text: str,
    marks: Sequence[tuple[float, str]] = (),
    width: int = 520,
) -> SafeString:
    """Horizontal bars; a flagged item is drawn in the alert colour, hatched, and followed by
    `flag_text` (so it is not told by colour alone). `marks` are labelled vertical lines."""
    row, left, top = 24, 110, 30 + 13 * len(marks)
    height = top + row * max(len(items), 1) + 8
    ceiling = _nice_ceiling(max([value for _, value, _ in items if value is not None] + [mark for mark, _ in marks] + [0.0]))
    plot_w = width - left - 120
    parts = _svg_open(width=width, height=height, title=title, description=description)
    parts.append(
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="6" height="6" fill="{ALERT}"/><line x1="0" y1="0" x2="0" y2="6" stroke="#fff" '
        'stroke-width="2"/></pattern></defs>'
    )
    for index, (value, name) in enumerate(marks):
        # One label line per mark, the first nearest the bars: close marks do not overlap.
        x = left + plot_w * value / ceiling
        label_y = top - 6 - 13 * index
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{label_y + 2}" y2="{height - 6}" stroke="{DARK}" stroke-dasharray="3 3"/>'
        )
        parts.append(f'<text x="{x + 3:.1f}" y="{label_y}" {TENANT_FONT}>{escape(name)} {escape(_format(value, ""))}</text>')
    if not items:
        parts.append(f'<text x="{left}" y="{top + 14}" {TENANT_FONT}>no data</text>')
    for i, (label, value, flagged) in enumerate(items):
        y = top + i * row
        parts.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" {TENANT_FONT}>{_label(label)}</text>')
        if value is None:
            parts.append(f'<text x="{left}" y="{y + 15}" {TENANT_FONT}>not tested</text>')
            continue
        bar = plot_w * min(value / ceiling, 1.0)
        fill = "url(#hatch)" if flagged else ACCENT
        parts.append(
            f'<rect x="{left}" y="{y + 4}" width="{max(bar, 1):.1f}" height="{row - 8}" fill="{fill}" '
            f'stroke="{ALERT if flagged else ACCENT}" rx="2"/>'
        )
        shown = f"{value:.3g}" + (f" · {flag_text}" if flagged else "")
        weight = ' font-weight="700"' if flagged else ""
        parts.append(f'<text x="{left + bar + 6:.1f}" y="{y + 15}" {TENANT_FONT}{weight}>{escape(shown)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def paired_bar_chart(
    rows: Sequence[tuple[str, float, float]], *, series: tuple[str, str], title: str, description: str, width: int = 440
) -> SafeString:
    """Two horizontal bars per row (shares from 0 to 1): the first series outlined and light,
    the second solid, with a legend naming them."""
    pair, left, top = 34, 110, 44
    height = top + pair * max(len(rows), 1) + 8
    ceiling = _nice_ceiling(max([max(a, b) for _, a, b in rows] + [0.01]))
    plot_w = width - left - 50
    parts = _svg_open(width=width, height=height, title=title, description=description)
    for index, (name, fill, stroke) in enumerate(((series[0], REFERENCE_FILL, DARK), (series[1], ACCENT, ACCENT))):
        x = left + index * 110
        parts.append(f'<rect x="{x}" y="22" width="12" height="12" fill="{fill}" stroke="{stroke}"/>')
        parts.append(f'<text x="{x + 16}" y="31" {TENANT_FONT}>{escape(name)}</text>')
    if not rows:
        parts.append(f'<text x="{left}" y="{top + 14}" {TENANT_FONT}>no data</text>')
    for i, (label, first, second) in enumerate(rows):
        y = top + i * pair
        parts.append(f'<text x="{left - 6}" y="{y + 19}" text-anchor="end" {TENANT_FONT}>{_label(label)}</text>')
        for j, (value, fill, stroke) in enumerate(((first, REFERENCE_FILL, DARK), (second, ACCENT, ACCENT))):
            bar = plot_w * min(value / ceiling, 1.0)
            yy = y + 3 + j * 14
            parts.append(
                f'<rect x="{left}" y="{yy}" width="{bar:.1f}" height="12" fill="{fill}" stroke="{stroke}" stroke-width="0.8"/>'
            )
            parts.append(f'<text x="{left + bar + 4:.1f}" y="{yy + 10}" {TENANT_FONT}>{escape(_format(value, "%"))}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def interval_chart(
    rows: Sequence[tuple[str, float | None, float | None, float | None, bool]],
    *,
    title: str,
    description: str,
    unit: str = "",
    bounds: tuple[float, float] | None = None,
    width: int = 560,
) -> SafeString:
    """Horizontal bars (label, value, low, high, highlighted) with their confidence interval
    as a whisker; `bounds` fixes the axis (accuracy: 0 to 1), else it spans the data and 0."""
    row, left, top, bottom = 30, 110, 28, 22
    height = top + row * max(len(rows), 1) + bottom
    plot_w = width - left - 70
    known = [v for _, value, low, high, _ in rows for v in (value, low, high) if v is not None]
    if bounds is None:
        low_end = min([0.0, *known])
        high_end = _nice_ceiling(max([0.0, *known])) if max([0.0, *known]) > 0 else 0.0
        low_end = -_nice_ceiling(-low_end) if low_end < 0 else 0.0
        bounds = (low_end, high_end if high_end > low_end else low_end + 1.0)
    lo, hi = bounds

    def x_of(value: float) -> float:
        return left + plot_w * (min(max(value, lo), hi) - lo) / (hi - lo)

    parts = _svg_open(width=width, height=height, title=title, description=description)
    axis_y = height - bottom + 4
    for i in range(5):
        tick = lo + (hi - lo) * i / 4
        parts.append(f'<line x1="{x_of(tick):.1f}" x2="{x_of(tick):.1f}" y1="{top}" y2="{axis_y - 4}" stroke="#e5e7eb"/>')
        parts.append(
            f'<text x="{x_of(tick):.1f}" y="{axis_y + 10}" text-anchor="middle" '
            f"{TENANT_FONT}>{escape(_format(tick, unit))}</text>"
        )
    for i, (label, value, low, high, highlighted) in enumerate(rows):
        y = top + i * row
        parts.append(f'<text x="{left - 6}" y="{y + 18}" text-anchor="end" {TENANT_FONT}>{_label(label)}</text>')
        if value is None:
            parts.append(f'<text x="{left + 4}" y="{y + 18}" {TENANT_FONT}>no feedback yet</text>')
            continue
        start, end = sorted((x_of(max(lo, min(0.0, hi))), x_of(value)))
        color = ACCENT if highlighted else "#5d7ea8"
        parts.append(f'<rect x="{start:.1f}" y="{y + 7}" width="{max(end - start, 1):.1f}" height="14" fill="{color}" rx="2"/>')
        if low is not None and high is not None:
            a, b = x_of(low), x_of(high)
            parts.append(f'<line x1="{a:.1f}" x2="{b:.1f}" y1="{y + 14}" y2="{y + 14}" stroke="{DARK}" stroke-width="2"/>')
            for cap in (a, b):
                parts.append(f'<line x1="{cap:.1f}" x2="{cap:.1f}" y1="{y + 8}" y2="{y + 20}" stroke="{DARK}" stroke-width="2"/>')
        parts.append(
            f'<text x="{max(end, x_of(high) if high is not None else end) + 6:.1f}" y="{y + 18}" '
            f"{TENANT_FONT}>{escape(_format(value, unit))}</text>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))
