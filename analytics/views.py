"""Web pages for a model's usage, drift reports, replays (the Compare tab) and experiments.

Usage: the rollups the worker writes (analytics.services.usage, run by beat every
ANALYTICS_ROLLUP_SECONDS), read by the same selector as `GET .../usage`; the page says when
they were last written.

Thin views over the services and selectors the REST API uses: `request_report` and the drift
selectors, `create_experiment` / `stop_experiment` / `promote_winner`, and
`experiment_results`, `request_replay` and the replay selectors. Roles are the API's: viewers read, members and above run reports,
start, stop and promote experiments, and start replays. Charts are server-rendered SVG (analytics.charts), each
with the same numbers in a table beside it.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from accounts.models import Role
from accounts.views import caller_of, confirmation_page, is_confirmed, may, render_page, show_errors
from analytics import charts
from analytics.api import MAX_WINDOW_HOURS
from analytics.models import DriftReport, Granularity, Replay
from analytics.selectors import drift as drift_selectors
from analytics.selectors import mirrors as mirror_reports
from analytics.selectors import replays as replay_selectors
from analytics.selectors.experiments import experiment_results
from analytics.selectors.usage import recent_usage, rollup_interval_seconds
from analytics.services import drift as drift_services
from analytics.services import replays as replay_services
from analytics.services.promotion_gate import gate_figures
from analytics.statistics.drift import PSI_MODERATE, PSI_SIGNIFICANT
from inference.experiments import selectors as experiment_selectors
from inference.experiments import services as experiment_services
from inference.mirrors import selectors as mirror_selectors
from inference.mirrors import services as mirror_services
from inference.models import Experiment
from platform_site.errors import ModelhostError, NotFound
from registry import selectors as registry_selectors
from registry.models import RegisteredModel
from registry.views import model_or_404

PAGE_SIZE = 25
# What the Compare tab's promote buttons ask of the replay (or mirror) they promote from.
DEFAULT_MIN_AGREEMENT = 0.98
TEST_NAMES = {
    "ks": "Kolmogorov–Smirnov",
    "chisquare": "chi-squared",
    "z": "two-proportion z",
    "wasserstein": "Wasserstein (normed)",
    "jensenshannon": "Jensen–Shannon distance",
}

# ---------------------------------------------------------------------------- forms


class DriftRunForm(forms.Form):
    version = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, help_text="Empty: the production version.")
    window_hours = forms.IntegerField(
        label="Window (hours)",
        min_value=1,
        max_value=MAX_WINDOW_HOURS,
        help_text="The inputs served in the last this many hours.",
    )

    def __init__(self, *args, model: RegisteredModel, numbers: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        production = model.production_version.number if model.production_version else None
        empty = f"Production version (v{production})" if production else "Production version (none yet)"
        self.fields["version"].choices = [("", empty)] + [(n, f"v{n}") for n in numbers]
        self.fields["window_hours"].initial = drift_services.default_window_hours()


class ExperimentForm(forms.Form):
    """Name, metric and up to MAX_VARIANTS (version, weight) rows; empty rows after the second are skipped."""

    name = forms.CharField(max_length=100, help_text="For you and the results, e.g. “v3 vs v2”.")
    metric = forms.ChoiceField(
        choices=Experiment.Metric.choices,
        help_text=(
            "Accuracy for classifiers and outlier detectors; for regressors, the mean absolute or root mean squared error "
            "of "
            "the predictions against the true values sent as feedback."
        ),
    )
    min_samples = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10_000_000,
        label="Feedback needed per variant",
        help_text="Before a difference can count as significant; default 100.",
    )

    def __init__(self, *args, numbers: list[int], production: int | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows = min(max(2, len(numbers)), experiment_services.MAX_VARIANTS)
        choices = [("", "—")] + [(n, f"v{n}") for n in numbers]
        control = production or (numbers[0] if numbers else None)
        challengers = [n for n in numbers if n != control]
        for i in range(self.rows):
            initial_version = control if i == 0 else (challengers[0] if i == 1 and challengers else None)
            # An experiment has at least two variants: the first two rows are required.
            self.fields[f"variant_{i}_version"] = forms.TypedChoiceField(
                coerce=int, empty_value=None, required=i < 2, choices=choices, label="Version", initial=initial_version
            )
            self.fields[f"variant_{i}_weight"] = forms.IntegerField(
                required=i < 2, label="Weight (%)", min_value=1, max_value=99, initial=50 if i < 2 else None
            )
        self.variant_rows: list[int] = []  # the form row of each variant sent to the service

    def basic_fields(self) -> list:
        return [self["name"], self["metric"], self["min_samples"]]

    def variant_fields(self) -> list[tuple[int, forms.BoundField, forms.BoundField]]:
        return [(i + 1, self[f"variant_{i}_version"], self[f"variant_{i}_weight"]) for i in range(self.rows)]

    def clean(self):
        data = super().clean()
        variants = []
        for i in range(self.rows):
            version, weight = data.get(f"variant_{i}_version"), data.get(f"variant_{i}_weight")
            if version is None and weight is None:
                continue
            if version is None:
                self.add_error(f"variant_{i}_version", "choose a version, or clear the weight")
            elif weight is None:
                self.add_error(f"variant_{i}_weight", "give a weight from 1 to 99")
            else:
                variants.append({"version": version, "weight": weight})
                self.variant_rows.append(i)
        data["variants"] = variants
        return data

    def service_field_map(self) -> dict[str, str]:
        """The service names variants by position in its list ("variants[1].weight")."""
        mapping = {}
        for position, row in enumerate(self.variant_rows):
            mapping[f"variants[{position}].version"] = f"variant_{row}_version"
            mapping[f"variants[{position}].weight"] = f"variant_{row}_weight"
        return mapping


# ---------------------------------------------------------------------------- shaping


def _histogram_rows(histogram: dict) -> list[tuple[str, float, float]]:
    """(bin or category, reference share, current share) from a stored feature histogram."""
    if "categories" in histogram:
        labels = histogram["categories"]
    elif "edges" in histogram:
        edges = histogram["edges"]
        labels = [f"{low:.3g} to {high:.3g}" for low, high in itertools.pairwise(edges)]
    else:
        return []
    return list(zip(labels, histogram["reference"], histogram["current"], strict=True))


def _feature_view(feature: dict) -> dict:
    rows = _histogram_rows(feature.get("histogram") or {})
    binned = "edges" in (feature.get("histogram") or {})
    return {
        **feature,
        "test_name": TEST_NAMES.get(feature.get("test"), "none"),
        "histogram_table": [(label, _percent(ref), _percent(cur)) for label, ref, cur in rows],
        "histogram_chart": charts.paired_bar_chart(
            rows,
            series=("Reference", "Current"),
            title=f"{feature['name']}: share of rows per {'bin' if binned else 'value'}",
            description=(
                "Bins are the reference's deciles, so each reference bar is near 10%; a current bar far from it shows "
                "where the inputs moved."
                if binned
                else "Share of rows taking each value, in the reference and in the window."
            ),
        )
        if rows
        else None,
    }


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _number(value: float | None, *, is_accuracy: bool) -> str:
    if value is None:
        return "—"
    return _percent(value) if is_accuracy else f"{value:.4g}"


def _variant_view(variant: dict, *, is_accuracy: bool) -> dict:
    metric = variant["metric"]
    has_feedback = variant["feedback"] > 0
    difference = variant["difference"]
    view = {
        **variant,
        "label": f"v{variant['version']}" + (" (control)" if variant["is_control"] else ""),
        "metric_text": _number(metric["value"], is_accuracy=is_accuracy) if has_feedback else "—",
        "interval_text": (
            f"{_number(metric['low'], is_accuracy=is_accuracy)} to {_number(metric['high'], is_accuracy=is_accuracy)}"
        )
        if has_feedback
        else "",
        "error_rate_text": _percent(variant["error_rate"]),
        "errors_text": f"{_number(variant['error_metrics']['mae'], is_accuracy=False)} / "
        f"{_number(variant['error_metrics']['rmse'], is_accuracy=False)}"
        if variant["error_metrics"] and has_feedback
        else "—",
        "difference_text": "",
        "p_value_text": "",
    }
    if difference is not None and difference["value"] is not None and has_feedback:
        sign = "+" if difference["value"] >= 0 else ""
        view["difference_text"] = f"{sign}{_number(difference['value'], is_accuracy=is_accuracy)}"
        if difference["low"] is not None and difference["high"] is not None:
            view["difference_text"] += (
                f" ({_number(difference['low'], is_accuracy=is_accuracy)} to "
                f"{_number(difference['high'], is_accuracy=is_accuracy)})"
            )
        view["p_value_text"] = "—" if difference["p_value"] is None else f"{difference['p_value']:.3g}"
    return view


# ---------------------------------------------------------------------------- drift pages


def _numbers(model: RegisteredModel) -> list[int]:
    return list(registry_selectors.versions_of(model=model).values_list("number", flat=True))


def _model_list_page(
    request: HttpRequest, model: RegisteredModel, form, *, items, template: str, model_tab: str, status: int = 200
) -> HttpResponse:
    """A model tab that pages through `items`, newest first, above the form that starts another."""
    page = Paginator(items, PAGE_SIZE).get_page(request.GET.get("page"))
    return render_page(
        request,
        template,
        {
            "organization": model.organization,
            "model": model,
            "page": page,
            "form": form,
            "can_write": may(model.organization, Role.MEMBER),
            "tab": "models",
            "model_tab": model_tab,
        },
        status=status,
    )


def _drift_list_page(request: HttpRequest, model: RegisteredModel, form: DriftRunForm, *, status: int = 200) -> HttpResponse:
    items = drift_selectors.reports_of(model=model)
    return _model_list_page(
        request, model, form, items=items, template="analytics/drift_reports.html", model_tab="drift", status=status
    )


@login_required
def drift_reports(request: HttpRequest, org: str, model: str) -> HttpResponse:
    """A model's drift reports, newest first, and the "Run now" form (members and above)."""
    registered = model_or_404(request, org, model)
    form = DriftRunForm(request.POST or None, model=registered, numbers=_numbers(registered))
    if request.method == "POST":
        if not may(registered.organization, Role.MEMBER):
            raise PermissionDenied("Running drift reports needs the member role or above.")
        if form.is_valid():
            try:
                report = drift_services.request_report(
                    caller=caller_of(request),
                    model=registered,
                    version_number=form.cleaned_data["version"],
                    window_hours=form.cleaned_data["window_hours"],
                    trigger=DriftReport.Trigger.API,
                )
            except ModelhostError as exc:
                show_errors(form, exc)
                return _drift_list_page(request, registered, form, status=exc.status)
            else:
                messages.success(
                    request, f"Drift report #{report.id} is queued; this page shows its results when the worker is done."
                )
                return redirect("drift-report", org=org, model=model, report_id=report.id)
        return _drift_list_page(request, registered, form, status=400)
    return _drift_list_page(request, registered, form)


@login_required
def drift_report(request: HttpRequest, org: str, model: str, report_id: int) -> HttpResponse:
    registered = model_or_404(request, org, model)
    try:
        report = drift_selectors.report_of(model=registered, report_id=report_id)
    except NotFound:
        raise Http404("No such drift report.") from None
    if report.status != DriftReport.Status.DONE:
        return render_page(
            request,
            "analytics/drift_report_unfinished.html",
            {
                "organization": registered.organization,
                "model": registered,
                "report": report,
                "is_unfinished": report.status in DriftReport.UNFINISHED,
                "tab": "models",
                "model_tab": "drift",
            },
        )
    features = [_feature_view(feature) for feature in report.features]
    drifted = [f["name"] for f in features if f["drifted"]]
    prediction = _feature_view({"name": "prediction", **report.prediction}) if report.prediction.get("test") else None
    return render_page(
        request,
        "analytics/drift_report.html",
        {
            "organization": registered.organization,
            "model": registered,
            "report": report,
            "features": features,
            "prediction": prediction,
            "prediction_note": report.prediction.get("note", ""),
            "share_percent": _percent(report.share_drifted),
            "threshold_percent": _percent(report.drift_share_threshold),
            "psi_chart": charts.flagged_bar_chart(
                [(f["name"], f["psi"], f["drifted"]) for f in features],
                title="PSI per feature",
                description=(
                    f"{len(drifted)} of {len(features)} features drifted by their test"
                    + (f": {', '.join(drifted)}." if drifted else ".")
                    + " Dashed lines mark PSI 0.1 (moderate) and 0.25 (significant)."
                ),
                flag_text="drifted",
                marks=[(PSI_MODERATE, "moderate"), (PSI_SIGNIFICANT, "significant")],
            ),
            "tab": "models",
            "model_tab": "drift",
        },
    )


# ---------------------------------------------------------------------------- replay pages (Compare)


class ReplayForm(forms.Form):
    version = forms.TypedChoiceField(coerce=int, help_text="The version to compare with production.")
    rows = forms.IntegerField(
        min_value=1, required=False, help_text="Production's newest recorded rows to replay; empty: the default."
    )
    window_hours = forms.IntegerField(
        label="Window (hours)",
        min_value=1,
        max_value=MAX_WINDOW_HOURS,
        required=False,
        help_text="Only rows served in the last this many hours; empty: any time.",
    )

    def __init__(self, *args, model: RegisteredModel, numbers: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"].choices = [
            (n, f"v{n}") for n in numbers if n != (model.production_version.number if model.production_version else None)
        ]
        self.fields["rows"].widget.attrs["placeholder"] = str(replay_services.default_rows())


class MirrorForm(forms.Form):
    version = forms.TypedChoiceField(coerce=int, help_text="The candidate that predicts the mirrored requests.")
    percent = forms.FloatField(
        label="Share of production's requests (%)",
        min_value=0.01,
        max_value=100 * mirror_services.MAX_FRACTION,
        initial=10,
        help_text=f"Above 0, at most {100 * mirror_services.MAX_FRACTION:g} %.",
    )
    max_rows_per_hour = forms.IntegerField(
        label="Rows per hour, at most", min_value=1, required=False, help_text="Empty: the default."
    )

    def __init__(self, *args, model: RegisteredModel, numbers: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        production = model.production_version.number if model.production_version else None
        self.fields["version"].choices = [(n, f"v{n}") for n in numbers if n != production]
        self.fields["max_rows_per_hour"].widget.attrs["placeholder"] = str(settings.MIRROR_DEFAULT_ROWS_PER_HOUR)
        self.prefix = "mirror"


def _mirror_view(model: RegisteredModel) -> dict:
    """The Compare tab's mirror: the running (or newest) mirror, its report and what the gate reads from it."""
    mirror = mirror_selectors.current_mirror(model=model)
    if mirror is None:
        return {"mirror": None}
    row = mirror_reports.report_of(mirror=mirror)
    report = row.report if row is not None and row.report else None
    view = {
        "mirror": mirror,
        "mirror_row": row,
        "mirror_report": report,
        "mirror_is_current": mirror.baseline_version_id == model.production_version_id,
    }
    if report:
        view["mirror_gate"] = gate_figures(report)
        view["mirror_agreement_percent"] = _percent(report["agreement"])
        detail = report["agreement_detail"]
        view["mirror_confusion"] = _confusion_view(detail["confusion"]) if "confusion" in detail else None
    return view


def _replays_page(
    request: HttpRequest, model: RegisteredModel, form: ReplayForm, *, status: int = 200, mirror_form: MirrorForm | None = None
) -> HttpResponse:
    page = Paginator(replay_selectors.replays_of(model=model), PAGE_SIZE).get_page(request.GET.get("page"))
    return render_page(
        request,
        "analytics/replays.html",
        {
            "organization": model.organization,
            "model": model,
            "page": page,
            "form": form,
            "mirror_form": mirror_form or MirrorForm(model=model, numbers=_numbers(model)),
            "can_write": may(model.organization, Role.MEMBER),
            "can_mirror": may(model.organization, Role.ADMIN),
            "default_min_agreement": DEFAULT_MIN_AGREEMENT,
            **_mirror_view(model),
            "tab": "models",
            "model_tab": "compare",
        },
        status=status,
    )


@login_required
@require_POST
def mirror_start(request: HttpRequest, org: str, model: str) -> HttpResponse:
    """Start mirroring production's requests to a version (owners and admins, as the API)."""
    registered = model_or_404(request, org, model, min_role=Role.ADMIN)
    form = MirrorForm(request.POST, model=registered, numbers=_numbers(registered))
    if form.is_valid():
        try:
            mirror = mirror_services.start_mirror(
                caller=caller_of(request),
                model=registered,
                version_number=form.cleaned_data["version"],
                fraction=form.cleaned_data["percent"] / 100,
                max_rows_per_hour=form.cleaned_data["max_rows_per_hour"],
            )
        except ModelhostError as exc:
            show_errors(form, exc, field_map={"fraction": "percent"})
            return _replays_page(
                request,
                registered,
                ReplayForm(model=registered, numbers=_numbers(registered)),
                status=exc.status,
                mirror_form=form,
            )
        messages.success(
            request,
            f"Mirroring {mirror.fraction:.0%} of production's requests to version {mirror.version.number}; "
            "the report below fills as the worker compares them.",
        )
        return redirect("replays", org=org, model=model)
    return _replays_page(
        request, registered, ReplayForm(model=registered, numbers=_numbers(registered)), status=400, mirror_form=form
    )


@login_required
@require_POST
def mirror_stop(request: HttpRequest, org: str, model: str) -> HttpResponse:
    registered = model_or_404(request, org, model, min_role=Role.ADMIN)
    try:
        mirror = mirror_services.stop_mirror(caller=caller_of(request), model=registered)
    except ModelhostError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(request, f"Mirroring to version {mirror.version.number} stopped; its report stays here.")
    return redirect("replays", org=org, model=model)


@login_required
def replays(request: HttpRequest, org: str, model: str) -> HttpResponse:
    """A model's replays, newest first, and the form that starts one (members and above); the
    model page's "Replay" buttons post here too."""
    registered = model_or_404(request, org, model)
    form = ReplayForm(request.POST or None, model=registered, numbers=_numbers(registered))
    if request.method == "POST":
        if not may(registered.organization, Role.MEMBER):
            raise PermissionDenied("Starting replays needs the member role or above.")
        if form.is_valid():
            try:
                replay = replay_services.request_replay(
                    caller=caller_of(request),
                    model=registered,
                    version_number=form.cleaned_data["version"],
                    rows=form.cleaned_data["rows"],
                    window_hours=form.cleaned_data["window_hours"],
                )
            except ModelhostError as exc:
                show_errors(form, exc)
                return _replays_page(request, registered, form, status=exc.status)
            messages.success(request, f"Replay #{replay.id} is queued; this page shows its report when the worker is done.")
            return redirect("replay", org=org, model=model, replay_id=replay.id)
        return _replays_page(request, registered, form, status=400)
    return _replays_page(request, registered, form)


def _confusion_view(confusion: dict) -> dict:
    counts = confusion["counts"]
    total = sum(map(sum, counts)) or 1
    return {
        "labels": confusion["labels"],
        "rows": [
            (label, [(count, i == j, f"{count / total:.0%}") for j, count in enumerate(row)])
            for i, (label, row) in enumerate(zip(confusion["labels"], counts, strict=True))
        ],
    }


def _replay_charts(replay: Replay) -> dict:
    report = replay.report
    latency = report["latency"]
    charts_out = {}
    if latency["batches"]:
        production_ms, candidate_ms = latency["production"]["total_ms"], latency["candidate"]["total_ms"]
        charts_out["latency"] = charts.flagged_bar_chart(
            [
                (f"v{replay.baseline_version.number} (production)", production_ms, False),
                (f"v{replay.version.number}", candidate_ms, candidate_ms > 1.2 * production_ms),
            ],
            title="Time on the same rows (ms)",
            description=f"Both versions predicted the same {latency['rows']} rows in {latency['batches']} batches: "
            f"production {production_ms:.1f} ms, version {replay.version.number} {candidate_ms:.1f} ms.",
            flag_text="slower",
        )
    histogram = report["agreement_detail"].get("histogram")
    if histogram:
        edges, counts = histogram["edges"], histogram["counts"]
        total = sum(counts) or 1
        charts_out["differences"] = charts.flagged_bar_chart(
            [
                (f"{low:.3g} to {high:.3g}", count / total, False)
                for (low, high), count in zip(itertools.pairwise(edges), counts, strict=True)
            ],
            title=f"Share of rows by difference (v{replay.version.number} minus production)",
            description="How far the candidate's answers are from production's, row by row.",
            flag_text="",
        )
    return charts_out


@login_required
def replay(request: HttpRequest, org: str, model: str, replay_id: int) -> HttpResponse:
    """One replay: its progress while the worker runs it (the page polls), then its report."""
    registered = model_or_404(request, org, model)
    try:
        found = replay_selectors.replay_of(model=registered, replay_id=replay_id)
    except NotFound:
        raise Http404("No such replay.") from None
    context = {
        "organization": registered.organization,
        "model": registered,
        "replay": found,
        "is_unfinished": found.status in Replay.UNFINISHED,
        "progress_percent": round(100 * found.rows_done / found.rows_total) if found.rows_total else 0,
        "can_promote": may(registered.organization, Role.MEMBER) and found.version_id != registered.production_version_id,
        "default_min_agreement": DEFAULT_MIN_AGREEMENT,
        "tab": "models",
        "model_tab": "compare",
    }
    if found.status == Replay.Status.DONE:
        report = found.report
        detail = report["agreement_detail"]
        context.update(
            report=report,
            detail=detail,
            agreement_percent=_percent(found.agreement),
            confusion=_confusion_view(detail["confusion"]) if "confusion" in detail else None,
            shift=sorted((report["probability_shift"] or {}).items()),
            feedback=report["feedback"],
            charts=_replay_charts(found),
        )
    return render_page(request, "analytics/replay.html", context)


# ---------------------------------------------------------------------------- experiment pages


def _experiment_form(registered: RegisteredModel, data=None) -> ExperimentForm:
    production = registered.production_version.number if registered.production_version else None
    return ExperimentForm(data, numbers=sorted(_numbers(registered)), production=production)


@login_required
def experiments(request: HttpRequest, org: str, model: str) -> HttpResponse:
    """A model's experiments and the form that starts one (members and above)."""
    registered = model_or_404(request, org, model)
    form = _experiment_form(registered, request.POST or None)
    if request.method == "POST":
        if not may(registered.organization, Role.MEMBER):
            raise PermissionDenied("Starting experiments needs the member role or above.")
        if form.is_valid():
            data = form.cleaned_data
            try:
                experiment = experiment_services.create_experiment(
                    caller=caller_of(request),
                    model=registered,
                    name=data["name"],
                    metric=data["metric"],
                    variants=data["variants"],
                    min_samples=data["min_samples"],
                )
            except ModelhostError as exc:
                show_errors(form, exc, field_map=form.service_field_map())
            else:
                split = ", ".join(f"{v['name']} {v['weight']}%" for v in experiment.variants)
                messages.success(request, f"Experiment “{experiment.name}” started: {split}.")
                return redirect("experiment-detail", org=org, model=model, experiment_id=experiment.id)
    rows = experiment_selectors.experiments_of(model=registered)
    return render_page(
        request,
        "analytics/experiments.html",
        {
            "organization": registered.organization,
            "model": registered,
            "experiments": rows,
            "running": experiment_selectors.running_experiment(model=registered),
            "form": form,
            "can_write": may(registered.organization, Role.MEMBER),
            "tab": "models",
            "model_tab": "experiments",
        },
        status=400 if form.errors else 200,
    )


def _experiment_or_404(registered: RegisteredModel, experiment_id: int) -> Experiment:
    try:
        return experiment_selectors.experiment_of(model=registered, experiment_id=experiment_id)
    except NotFound:
        raise Http404("No such experiment.") from None


@login_required
def experiment_detail(request: HttpRequest, org: str, model: str, experiment_id: int) -> HttpResponse:
    registered = model_or_404(request, org, model)
    experiment = _experiment_or_404(registered, experiment_id)
    results = experiment_results(experiment=experiment)
    is_accuracy = experiment.metric == Experiment.Metric.ACCURACY
    variants = [_variant_view(v, is_accuracy=is_accuracy) for v in results["variants"]]
    metric_name = experiment.get_metric_display().lower()
    return render_page(
        request,
        "analytics/experiment.html",
        {
            "organization": registered.organization,
            "model": registered,
            "experiment": experiment,
            "results": results,
            "variants": variants,
            "confidence_percent": f"{results['confidence']:.0%}",
            "chart": charts.interval_chart(
                [
                    (
                        v["label"],
                        v["metric"]["value"] if v["feedback"] else None,
                        v["metric"]["low"],
                        v["metric"]["high"],
                        v["version"] == results["leader"],
                    )
                    for v in variants
                ],
                title=f"{metric_name.capitalize()} per variant, with its {results['confidence']:.0%} interval",
                description="; ".join(
                    f"{v['label']}: {v['metric_text']}" + (f" ({v['interval_text']})" if v["interval_text"] else "")
                    for v in variants
                )
                + ".",
                unit="%" if is_accuracy else "",
                bounds=(0.0, 1.0) if is_accuracy else None,
            ),
            "is_running": experiment.status == Experiment.Status.RUNNING,
            "can_write": may(registered.organization, Role.MEMBER),
            "tab": "models",
            "model_tab": "experiments",
        },
    )


@login_required
@require_POST
def experiment_stop(request: HttpRequest, org: str, model: str, experiment_id: int) -> HttpResponse:
    registered = model_or_404(request, org, model, min_role=Role.MEMBER)
    experiment = _experiment_or_404(registered, experiment_id)
    if not is_confirmed(request):
        return confirmation_page(
            request,
            title="Stop experiment",
            message=f"Stop “{experiment.name}”? Every request to {registered.full_name} goes to its production version again.",
            confirm_label="Stop experiment",
            cancel_url=reverse("experiment-detail", args=[org, model, experiment.id]),
        )
    try:
        experiment_services.stop_experiment(caller=caller_of(request), experiment=experiment)
    except ModelhostError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(request, f"Experiment “{experiment.name}” stopped.")
    return redirect("experiment-detail", org=org, model=model, experiment_id=experiment.id)


@login_required
@require_POST
def experiment_promote(request: HttpRequest, org: str, model: str, experiment_id: int) -> HttpResponse:
    registered = model_or_404(request, org, model, min_role=Role.MEMBER)
    experiment = _experiment_or_404(registered, experiment_id)
    try:
        number = int(request.POST.get("version", ""))
    except ValueError:
        messages.error(request, "Choose the variant to promote.")
        return redirect("experiment-detail", org=org, model=model, experiment_id=experiment.id)
    if not is_confirmed(request):
        return confirmation_page(
            request,
            title="Promote this variant",
            message=f"Stop “{experiment.name}” and put version {number} of {registered.full_name} into production, as a new "
            "release?",
            confirm_label="Promote",
            cancel_url=reverse("experiment-detail", args=[org, model, experiment.id]),
            with_reason=True,
        )
    try:
        _, release = experiment_services.promote_winner(
            caller=caller_of(request), experiment=experiment, version_number=number, reason=request.POST.get("reason", "")[:500]
        )
    except ModelhostError as exc:
        messages.error(request, exc.detail)
        return redirect("experiment-detail", org=org, model=model, experiment_id=experiment.id)
    if release is None:
        messages.success(request, f"Version {number} already was in production; the experiment is stopped.")
    else:
        messages.success(request, f"Release {release.number} puts version {number} in production.")
    return redirect("model-detail", org=org, model=model)


# ---------------------------------------------------------------------------- usage

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
        choices=[("", "Default for the range"), (Granularity.HOUR, "Per hour"), (Granularity.DAY, "Per day")],
        required=False,
        label="Granularity",
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
        slowest = max(
            (b for b in timeline if b["latency_ms"]["p99"] is not None), key=lambda b: b["latency_ms"]["p99"], default=None
        )
        traffic = (
            f"{scope}: {totals['requests']} requests and {totals['errors']} errors in all; the busiest {per}, "
            f"{_when(busiest['start'], granularity)}, had {busiest['requests']}."
        )
        latency = (
            f"{scope}: over the whole range p50 {_ms(totals['latency_ms']['p50'])}, p95 {_ms(totals['latency_ms']['p95'])}, "
            f"p99 {_ms(totals['latency_ms']['p99'])}"
        )
        if slowest is not None:
            latency += (
                f"; the highest p99 of one {per} was {_ms(slowest['latency_ms']['p99'])}, at "
                f"{_when(slowest['start'], granularity)}"
            )
        latency += "."
        cache = (
            f"{scope}: {totals['cache_hits']} of {totals['requests']} requests answered from the cache "
            f"({totals['cache_hit_rate']:.0%})."
        )
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
