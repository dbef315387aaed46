"""Web page for a model's usage: requests, errors, latency percentiles and cache hits over time.

The figures are the rollups the worker writes (analytics.services.usage, run by beat every
ANALYTICS_ROLLUP_SECONDS), read by the same selector as `GET .../usage`; the page says when
they were last written. Charts are server-rendered SVG (analytics.charts) with the figures
also as text: a summary, each chart's <desc>, and a table per bucket.
"""
from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.utils.safestring import SafeString

from accounts.views import render_page
from analytics import charts
from analytics.models import Granularity
from analytics.selectors.usage import recent_usage, rollup_interval_seconds
from registry.views import model_or_404

RANGES = {
    "24h": ("Last 24 hours", timedelta(hours=24), Granularity.HOUR),
    "7d": ("Last 7 days", timedelta(days=7), Granularity.HOUR),
    "30d": ("Last 30 days", timedelta(days=30), Granularity.DAY),
}
DEFAULT_RANGE = "24h"
BUCKET_NAME = {Granularity.HOUR: "hour", Granularity.DAY: "day"}
# Narrower than the admin's charts: the page's grid shows them near their own size, and a
# phone scales their text down less.
CHART_SIZE = {"width": 480, "height": 220}


class UsageRangeForm(forms.Form):
    range = forms.ChoiceField(choices=[(key, label) for key, (label, _, _) in RANGES.items()], required=False, label="Range")
    granularity = forms.ChoiceField(
        choices=[("", "Default for the range"), (Granularity.HOUR, "Per hour"), (Granularity.DAY, "Per day")], required=False, label="Granularity"
    )


def _when(moment, granularity: str) -> str:
    return moment.strftime("%Y-%m-%d %H:00" if granularity == Granularity.HOUR else "%Y-%m-%d")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def _usage_charts(usage: dict, *, granularity: str, span: timedelta) -> dict[str, SafeString]:
    timeline = usage["timeline"]
    per = BUCKET_NAME[granularity]
    if granularity == Granularity.DAY:
        time_format = "%m-%d"
    else:
        time_format = "%H:00" if span <= timedelta(hours=24) else "%m-%d %H:00"
    totals = usage["totals"]
    first, last = _when(timeline[0]["start"], granularity), _when(timeline[-1]["start"], granularity)
    scope = f"{len(timeline)} {per}s from {first} to {last} UTC"
    if totals:
        busiest = max(timeline, key=lambda bucket: bucket["requests"])
        slowest = max((b for b in timeline if b["latency_ms"]["p99"] is not None), key=lambda b: b["latency_ms"]["p99"], default=None)
        traffic = f"{scope}: {totals['requests']} requests and {totals['errors']} errors in all; the busiest {per}, {_when(busiest['start'], granularity)}, had {busiest['requests']}."
        latency = (
            f"{scope}: over the whole range p50 {_ms(totals['latency_ms']['p50'])}, p95 {_ms(totals['latency_ms']['p95'])}, "
            f"p99 {_ms(totals['latency_ms']['p99'])}"
        )
        if slowest is not None:
            latency += f"; the highest p99 of one {per} was {_ms(slowest['latency_ms']['p99'])}, at {_when(slowest['start'], granularity)}"
        latency += "."
        cache = f"{scope}: {totals['cache_hits']} of {totals['requests']} requests answered from the cache ({totals['cache_hit_rate']:.0%})."
    else:
        traffic = latency = cache = f"{scope}: no requests."

    def points(value):
        return [(bucket["start"], value(bucket)) for bucket in timeline]

    return {
        "traffic": charts.lines_chart(
            [
                charts.Series("Requests", points(lambda b: b["requests"]), "#0b5cad"),
                charts.Series("Errors", points(lambda b: b["errors"]), "#a4161a", "6 3"),
            ],
            title=f"Requests and errors per {per}",
            description=traffic,
            time_format=time_format,
            **CHART_SIZE,
        ),
        "latency": charts.lines_chart(
            [
                charts.Series("p50", points(lambda b: b["latency_ms"]["p50"]), "#1d6b2f"),
                charts.Series("p95", points(lambda b: b["latency_ms"]["p95"]), "#7a4b00", "6 3"),
                charts.Series("p99", points(lambda b: b["latency_ms"]["p99"]), "#a4161a", "2 3"),
            ],
            title=f"Latency percentiles per {per}",
            description=latency,
            unit="ms",
            time_format=time_format,
            **CHART_SIZE,
        ),
        "cache": charts.lines_chart(
            [charts.Series("Cache hit rate", points(lambda b: b["cache_hit_rate"]), "#0f766e")],
            title=f"Cache hit rate per {per}",
            description=cache,
            unit="%",
            y_max=1.0,
            time_format=time_format,
            **CHART_SIZE,
        ),
    }


@login_required
def model_usage(request: HttpRequest, org: str, model: str) -> HttpResponse:
    registered = model_or_404(request, org, model)
    form = UsageRangeForm(request.GET)
    chosen = form.cleaned_data if form.is_valid() else {}
    range_key = chosen.get("range") or DEFAULT_RANGE
    _, span, default_granularity = RANGES[range_key]
    granularity = chosen.get("granularity") or default_granularity
    usage = recent_usage(model=registered, span=span, granularity=granularity)
    return render_page(
        request,
        "analytics/usage.html",
        {
            "organization": registered.organization,
            "model": registered,
            "form": form,
            "range_label": RANGES[range_key][0],
            "per": BUCKET_NAME[granularity],
            "granularity": granularity,
            "usage": usage,
            "charts": _usage_charts(usage, granularity=granularity, span=span),
            "busy_buckets": [bucket for bucket in usage["timeline"] if bucket["requests"]],
            "rollup_minutes": rollup_interval_seconds() / 60,
            "tab": "models",
            "model_tab": "usage",
        },
        status=400 if form.errors else 200,
    )
