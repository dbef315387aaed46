"""The operators' console: a platform dashboard drawn from the rollups, and the analytics tables."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from accounts.principals import Caller
from analytics import charts
from analytics.models import AlertSettings, DriftReport, PlatformDashboard, QualityRollup, UsageRollup
from analytics.selectors.dashboard import platform_overview
from analytics.services import alerts
from analytics.services import drift as drift_services
from platform_site.errors import ModelhostError
from registry.models import ModelVersion


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the services compute: operators read them, never edit them by hand."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(PlatformDashboard)
class PlatformDashboardAdmin(ReadOnlyAdmin):
    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_urls(self):
        return [
            path(
                "run-drift-report/",
                self.admin_site.admin_view(self.run_drift_report_view),
                name="analytics_platformdashboard_run_drift",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if not self.has_view_permission(request):
            return super().changelist_view(request, extra_context)
        overview = platform_overview()
        daily, hourly = overview["daily"], overview["hourly"]
        context = {
            **self.admin_site.each_context(request),
            "title": "Platform dashboard",
            "opts": self.model._meta,
            "overview": overview,
            "charts": {
                "requests_daily": charts.line_chart(
                    [(b["start"], b["requests"]) for b in daily], title=f"Requests per day, last {overview['days']} days"
                ),
                "requests_hourly": charts.line_chart(
                    [(b["start"], b["requests"]) for b in hourly],
                    title=f"Requests per hour, last {overview['hours']} hours",
                    time_format="%d %H:00",
                ),
                "errors": charts.line_chart(
                    [(b["start"], b["error_rate"]) for b in daily], title="Error rate per day", unit="%", color="#b91c1c"
                ),
                "latency": charts.line_chart(
                    [(b["start"], b["latency_ms"]["p95"]) for b in daily], title="Latency p95 per day", unit="ms", color="#7c3aed"
                ),
                "cache": charts.line_chart(
                    [(b["start"], b["cache_hit_rate"]) for b in daily], title="Cache hit rate per day", unit="%", color="#0f766e"
                ),
                "top_organizations": charts.bar_chart(
                    [(row["organization__slug"], row["requests"]) for row in overview["top_organizations"]],
                    title="Top organizations by requests",
                ),
                "top_models": charts.bar_chart(
                    [
                        (f"{row['registered_model__organization__slug']}/{row['registered_model__name']}", row["requests"])
                        for row in overview["top_models"]
                    ],
                    title="Top models by requests",
                ),
            },
            "run_drift_url": reverse("admin:analytics_platformdashboard_run_drift"),
            "default_window_hours": drift_services.default_window_hours(),
        }
        return TemplateResponse(request, "admin/analytics/dashboard.html", context)

    def run_drift_report_view(self, request: HttpRequest):
        """POST version_id, window_hours: run a drift report now, on behalf of an operator."""
        back = reverse("admin:analytics_platformdashboard_changelist")
        if request.method != "POST" or not self.has_view_permission(request):
            return HttpResponseRedirect(back)
        try:
            version = ModelVersion.objects.select_related("registered_model__organization").get(
                pk=int(request.POST.get("version_id", ""))
            )
            hours = int(request.POST.get("window_hours") or drift_services.default_window_hours())
            report = drift_services.request_report(
                caller=Caller(user=request.user),
                model=version.registered_model,
                version_number=version.number,
                window_hours=hours,
                trigger=DriftReport.Trigger.ADMIN,
            )
        except (ValueError, ModelVersion.DoesNotExist):
            messages.error(request, "Choose a version and a whole number of hours.")
            return HttpResponseRedirect(back)
        except ModelhostError as exc:
            messages.error(request, exc.detail)
            return HttpResponseRedirect(back)
        messages.success(request, f"Drift report {report.pk} for {version} is queued for the worker.")
        return HttpResponseRedirect(reverse("admin:analytics_driftreport_change", args=[report.pk]))


@admin.register(DriftReport)
class DriftReportAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "registered_model",
        "version",
        "trigger",
        "status",
        "window_start",
        "window_end",
        "is_drift",
        "share_drifted",
        "current_rows",
        "created_at",
    ]
    list_filter = ["status", "is_drift", "trigger", "created_at"]
    search_fields = ["registered_model__name", "organization__slug"]
    list_select_related = ["registered_model__organization", "version__registered_model__organization"]
    readonly_fields = ["feature_table"]
    actions = ["run_again"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "organization",
                    "registered_model",
                    "version",
                    "trigger",
                    "status",
                    "error",
                    "window_start",
                    "window_end",
                    "is_drift",
                    "created_at",
                ]
            },
        ),
        ("Per feature", {"fields": ["feature_table"]}),
        ("Alert", {"fields": ["alerted_at", "webhook_delivered_at", "webhook_attempts", "webhook_error"]}),
    ]

    @admin.display(description="Features")
    def feature_table(self, report: DriftReport):
        if report.status != DriftReport.Status.DONE:
            return format_html(
                "<p><strong>{}</strong> {}</p>", report.get_status_display(), report.error or "(computed by the worker)"
            )
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    f["name"],
                    f["type"],
                    f["test"] or "-",
                    _number(f["statistic"]),
                    _number(f["p_value"]),
                    _number(f["threshold"]),
                    "yes" if f["drifted"] else "no",
                    f"{_number(f['psi'])} ({f['psi_band'] or '-'})",
                )
                for f in [*report.features, *([report.prediction] if report.prediction.get("name") else [])]
            ),
        )
        verdict = "drift" if report.is_drift else "no drift"
        return format_html(
            "<p><strong>{}</strong>: {} of {} features drifted (share {}; threshold {}). Window {} to {}, {} rows; "
            "reference {} ({} rows).</p>"
            "<table><thead><tr><th>feature</th><th>type</th><th>test</th><th>statistic</th><th>p-value</th><th>threshold</th>"
            "<th>drifted</th><th>PSI</th></tr></thead><tbody>{}</tbody></table>",
            verdict,
            report.drifted_features,
            report.n_features,
            _number(report.share_drifted),
            report.drift_share_threshold,
            report.window_start,
            report.window_end,
            report.current_rows,
            report.get_reference_source_display(),
            report.reference_rows,
            rows,
        )

    @admin.action(description="Run again now, same window length")
    def run_again(self, request, queryset):
        for report in queryset.select_related("version__registered_model__organization"):
            length = report.window_end - report.window_start
            try:
                new = drift_services.request_report(
                    caller=Caller(user=request.user),
                    model=report.registered_model,
                    version_number=report.version.number,
                    window_hours=max(1, round(length.total_seconds() / 3600)),
                    trigger=DriftReport.Trigger.ADMIN,
                )
            except ModelhostError as exc:
                messages.error(request, f"{report.version}: {exc.detail}")
                continue
            messages.success(request, f"{report.version}: report {new.pk} is queued for the worker.")


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    list_display = [
        "bucket_start",
        "granularity",
        "registered_model",
        "version",
        "variant",
        "api_key_id",
        "requests",
        "errors",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
    ]
    list_filter = ["granularity", "bucket_start"]
    search_fields = ["registered_model__name", "organization__slug"]
    list_select_related = ["registered_model__organization", "version__registered_model__organization"]
    date_hierarchy = "bucket_start"


@admin.register(QualityRollup)
class QualityRollupAdmin(ReadOnlyAdmin):
    list_display = ["day", "registered_model", "version", "task", "feedback", "correct", "abs_error_sum"]
    list_filter = ["task", "day"]
    search_fields = ["registered_model__name", "organization__slug"]
    list_select_related = ["registered_model__organization", "version__registered_model__organization"]


class AlertSettingsForm(forms.ModelForm):
    drift_webhook_url = forms.URLField(max_length=500, required=False, assume_scheme="https")

    class Meta:
        model = AlertSettings
        fields = ["organization", "drift_webhook_url"]

    def clean_drift_webhook_url(self) -> str:
        url = self.cleaned_data["drift_webhook_url"]
        if url:
            try:
                alerts.check_webhook_url(url)
            except ModelhostError as exc:
                raise forms.ValidationError(exc.detail) from None
        return url


@admin.register(AlertSettings)
class AlertSettingsAdmin(admin.ModelAdmin):
    form = AlertSettingsForm
    list_display = ["organization", "drift_webhook_url", "updated_at"]
    search_fields = ["organization__slug", "drift_webhook_url"]
    fields = ["organization", "drift_webhook_url", "updated_at"]
    readonly_fields = ["updated_at"]
