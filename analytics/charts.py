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
    return lines_chart([Series(title, points, color)], title=title, unit=unit, width=width, height=height, time_format=time_format)


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
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
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
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{escape(_format(ceiling * i / 4, unit))}</text>')
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
        parts.append(f'<text x="{x_of(i):.1f}" y="{height - 8}" text-anchor="{anchor}" {FONT}>{escape(instants[i].strftime(time_format))}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def bar_chart(items: Sequence[tuple[str, float]], *, title: str, unit: str = "", color: str = "#0f766e", width: int = 640) -> SafeString:
    """Horizontal bars, largest first as given, each labelled with its value."""
    row, left, top = 22, 160, 24
    height = top + row * max(len(items), 1) + 8
    ceiling = max((value for _, value in items), default=0) or 1
    plot_w = width - left - 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
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
