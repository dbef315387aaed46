"""REST API for analytics: usage, live quality, drift reports, replays, experiment results, alert settings."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.principals import caller_from_request
from accounts.selectors import organization_for_caller
from analytics.models import AlertSettings, DriftReport, Granularity, Replay
from analytics.selectors import drift as drift_selectors
from analytics.selectors import mirrors as mirror_reports
from analytics.selectors import replays as replay_selectors
from analytics.selectors.experiments import experiment_results
from analytics.selectors.quality import quality_of
from analytics.selectors.usage import usage_of
from analytics.services import alerts
from analytics.services import drift as drift_services
from analytics.services import replays as replay_services
from analytics.services.usage import day_floor, hour_floor
from inference.experiments.selectors import experiment_for_caller
from inference.mirrors import selectors as mirror_selectors
from inference.mirrors import services as mirror_services
from platform_site.errors import InvalidInput, NotFound
from platform_site.pagination import paginated
from platform_site.serializers import StrictSerializer
from registry import selectors as registry_selectors
from registry.api import resolve_model

# The most buckets one usage request may ask for: a month of hours, about a year of days.
MAX_BUCKETS = {Granularity.HOUR: 31 * 24, Granularity.DAY: 400}
DEFAULT_SPAN = {Granularity.HOUR: timedelta(hours=24), Granularity.DAY: timedelta(days=30)}
MAX_WINDOW_HOURS = 90 * 24


def _instant(request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        moment = parse_datetime(raw)
        if moment is None:
            day = parse_date(raw)
            moment = datetime.combine(day, time()) if day else None
    except ValueError:  # well formed but impossible, like month 13
        moment = None
    if moment is None:
        raise InvalidInput(
            f"{name}={raw!r} is not an ISO 8601 date or date-time.", errors=[{"field": name, "message": "expected ISO 8601"}]
        )
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


def _range(request, *, default_span: timedelta, max_span: timedelta) -> tuple[datetime, datetime]:
    end = _instant(request, "end") or timezone.now()
    start = _instant(request, "start") or end - default_span
    if start >= end:
        raise InvalidInput("start must be before end.", errors=[{"field": "start", "message": "must be before end"}])
    if end - start > max_span:
        raise InvalidInput(
            f"The range is longer than {max_span.days} days; ask for less.",
            errors=[{"field": "start", "message": "range too long"}],
        )
    return start, end


RANGE_PARAMETERS = [
    OpenApiParameter("start", OpenApiTypes.DATETIME, description="ISO 8601; default: one span before end"),
    OpenApiParameter("end", OpenApiTypes.DATETIME, description="ISO 8601, exclusive; default: now"),
]


class UsageApi(APIView):
    @extend_schema(
        parameters=[*RANGE_PARAMETERS, OpenApiParameter("granularity", str, enum=["hour", "day"], description="default: hour")],
        responses={200: OpenApiTypes.OBJECT},
        description=(
            "Requests, rows, errors, cache hits and latency per bucket, per version, variant and API key (series) and in total. "
            "The latency percentiles of one hour's series are exact; those of a day, of a bucket's total and of the totals come "
            "from latency sketches (DDSketch) and are within 1 % of the exact percentile."
        ),
    )
    def get(self, request, org: str, model: str):
        _, registered = resolve_model(request, org, model)
        granularity = request.query_params.get("granularity") or Granularity.HOUR
        if granularity not in Granularity.values:
            raise InvalidInput(
                f"granularity={granularity!r}; choose hour or day.",
                errors=[{"field": "granularity", "message": "choose hour or day"}],
            )
        step = timedelta(hours=1) if granularity == Granularity.HOUR else timedelta(days=1)
        start, end = _range(request, default_span=DEFAULT_SPAN[granularity], max_span=step * MAX_BUCKETS[granularity])
        start = hour_floor(start) if granularity == Granularity.HOUR else day_floor(start)
        return Response(usage_of(model=registered, start=start, end=end, granularity=granularity))


class QualityApi(APIView):
    @extend_schema(parameters=RANGE_PARAMETERS, responses={200: OpenApiTypes.OBJECT})
    def get(self, request, org: str, model: str):
        _, registered = resolve_model(request, org, model)
        start, end = _range(request, default_span=timedelta(days=30), max_span=timedelta(days=400))
        # Every day the range touches: [start's day, the day of end's last instant].
        first: date = start.astimezone(UTC).date()
        last: date = (end.astimezone(UTC) - timedelta(microseconds=1)).date() + timedelta(days=1)
        return Response(quality_of(model=registered, start=first, end=last))


class DriftFeatureSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.CharField()
    test = serializers.CharField(allow_null=True)
    statistic = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField(allow_null=True)
    drifted = serializers.BooleanField()
    psi = serializers.FloatField(allow_null=True)
    psi_band = serializers.CharField(allow_null=True)
    reference_rows = serializers.IntegerField()
    current_rows = serializers.IntegerField()
    histogram = serializers.JSONField()
    note = serializers.CharField()


class DriftReportSummarySerializer(serializers.Serializer):
    """A report; its results are null until `status` is done (`error` says why one failed)."""

    id = serializers.IntegerField()
    model = serializers.CharField(source="registered_model.full_name")
    version = serializers.IntegerField(source="version.number")
    trigger = serializers.CharField()
    status = serializers.ChoiceField(choices=DriftReport.Status.choices)
    error = serializers.CharField()
    window_start = serializers.DateTimeField()
    window_end = serializers.DateTimeField()
    reference_source = serializers.SerializerMethodField()
    reference_rows = serializers.IntegerField(allow_null=True)
    current_rows = serializers.IntegerField(allow_null=True)
    n_features = serializers.IntegerField(allow_null=True)
    drifted_features = serializers.IntegerField(allow_null=True)
    share_drifted = serializers.FloatField(allow_null=True)
    drift_share_threshold = serializers.FloatField()
    is_drift = serializers.BooleanField(allow_null=True)
    prediction_drifted = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField()

    def get_reference_source(self, report) -> str | None:
        return report.reference_source or None

    def get_prediction_drifted(self, report) -> bool | None:
        return report.prediction.get("drifted") if report.prediction else None


class DriftReportOutputSerializer(DriftReportSummarySerializer):
    reference_start = serializers.DateTimeField()
    reference_end = serializers.DateTimeField()
    features = serializers.JSONField()
    prediction = serializers.JSONField()
    seconds = serializers.FloatField()
    created_by = serializers.EmailField(source="created_by.email", default=None)
    alerted_at = serializers.DateTimeField()
    webhook_delivered_at = serializers.DateTimeField()


class DriftReportListApi(APIView):
    class InputSerializer(StrictSerializer):
        version = serializers.IntegerField(min_value=1, required=False)
        window_hours = serializers.IntegerField(min_value=1, max_value=MAX_WINDOW_HOURS, required=False)

    @extend_schema(responses={200: DriftReportSummarySerializer(many=True)})
    def get(self, request, org: str, model: str):
        _, registered = resolve_model(request, org, model)
        return paginated(request, self, drift_selectors.reports_of(model=registered), DriftReportSummarySerializer)

    @extend_schema(
        request=InputSerializer,
        responses={202: DriftReportOutputSerializer},
        description="Queues a report for the worker and answers 202 with it `pending`; poll `GET /api/v1/drift-reports/{id}` "
        "until `status` is `done` or `failed`. 409 (naming the report) while the model has one pending or running; 429 with "
        "Retry-After past the organization's reports per hour.",
    )
    def post(self, request, org: str, model: str):
        caller, registered = resolve_model(request, org, model, min_role=Role.MEMBER)
        data = self.InputSerializer(data=request.data or {})
        data.is_valid(raise_exception=True)
        report = drift_services.request_report(
            caller=caller,
            model=registered,
            version_number=data.validated_data.get("version"),
            window_hours=data.validated_data.get("window_hours"),
            trigger=DriftReport.Trigger.API,
        )
        return Response(
            DriftReportOutputSerializer(report).data,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": f"/api/v1/drift-reports/{report.pk}"},
        )


class DriftReportDetailApi(APIView):
    @extend_schema(responses={200: DriftReportOutputSerializer})
    def get(self, request, report_id: int):
        report = drift_selectors.report_for_caller(caller=caller_from_request(request), report_id=report_id)
        return Response(DriftReportOutputSerializer(report).data)


class ReplaySummarySerializer(serializers.Serializer):
    """A replay; its results are null until `status` is done (`error` says why one failed)."""

    id = serializers.IntegerField()
    model = serializers.CharField(source="registered_model.full_name")
    version = serializers.IntegerField(source="version.number")
    baseline_version = serializers.IntegerField(source="baseline_version.number")
    status = serializers.ChoiceField(choices=Replay.Status.choices)
    error = serializers.CharField()
    rows_requested = serializers.IntegerField()
    window_start = serializers.DateTimeField()
    window_end = serializers.DateTimeField()
    rows_total = serializers.IntegerField(allow_null=True)
    rows_done = serializers.IntegerField()
    progress = serializers.SerializerMethodField()
    rows_compared = serializers.IntegerField(allow_null=True)
    agreement = serializers.FloatField(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField()

    def get_progress(self, replay) -> float | None:
        if replay.status == Replay.Status.DONE:
            return 1.0
        return replay.rows_done / replay.rows_total if replay.rows_total else None


class ReplayOutputSerializer(ReplaySummarySerializer):
    report = serializers.JSONField()
    seconds = serializers.FloatField()
    created_by = serializers.EmailField(source="created_by.email", default=None)


def _replay_location(replay: Replay) -> str:
    return f"/api/v1/models/{replay.registered_model.full_name}/versions/{replay.version.number}/replays/{replay.pk}"


class ReplayListApi(APIView):
    class InputSerializer(StrictSerializer):
        rows = serializers.IntegerField(
            min_value=1, required=False, help_text="Production's newest rows to replay (default ANALYTICS_REPLAY_DEFAULT_ROWS)."
        )
        window_hours = serializers.IntegerField(
            min_value=1, max_value=MAX_WINDOW_HOURS, required=False, help_text="Only rows served in the last this many hours."
        )

    @extend_schema(responses={200: ReplaySummarySerializer(many=True)})
    def get(self, request, org: str, model: str, number: int):
        _, registered = resolve_model(request, org, model)
        version = registry_selectors.version_of(model=registered, number=number)
        return paginated(request, self, replay_selectors.replays_of(model=registered, version=version), ReplaySummarySerializer)

    @extend_schema(
        request=InputSerializer,
        responses={202: ReplayOutputSerializer},
        description="Replays the inputs production served (its newest recorded rows, or those of a window) against this version "
        "on the worker, and answers 202 with the replay `pending`; poll its Location until `status` is `done` or `failed`. "
        "Replays count against no rate limit or quota and touch neither the prediction cache nor usage. 409 (naming the "
        "replay) while the model has one pending or running.",
    )
    def post(self, request, org: str, model: str, number: int):
        caller, registered = resolve_model(request, org, model, min_role=Role.MEMBER)
        data = self.InputSerializer(data=request.data or {})
        data.is_valid(raise_exception=True)
        replay = replay_services.request_replay(
            caller=caller,
            model=registered,
            version_number=number,
            rows=data.validated_data.get("rows"),
            window_hours=data.validated_data.get("window_hours"),
        )
        return Response(
            ReplayOutputSerializer(replay).data, status=status.HTTP_202_ACCEPTED, headers={"Location": _replay_location(replay)}
        )


class ModelReplayListApi(APIView):
    @extend_schema(responses={200: ReplaySummarySerializer(many=True)})
    def get(self, request, org: str, model: str):
        _, registered = resolve_model(request, org, model)
        return paginated(request, self, replay_selectors.replays_of(model=registered), ReplaySummarySerializer)


class ReplayDetailApi(APIView):
    @extend_schema(responses={200: ReplayOutputSerializer})
    def get(self, request, org: str, model: str, number: int, replay_id: int):
        _, registered = resolve_model(request, org, model)
        version = registry_selectors.version_of(model=registered, number=number)
        return Response(
            ReplayOutputSerializer(replay_selectors.replay_of(model=registered, version=version, replay_id=replay_id)).data
        )


class MirrorOutputSerializer(serializers.Serializer):
    """A live mirror and the report it has accumulated (empty until the worker compared a row)."""

    id = serializers.IntegerField()
    model = serializers.CharField(source="registered_model.full_name")
    version = serializers.IntegerField(source="version.number")
    baseline_version = serializers.IntegerField(source="baseline_version.number")
    fraction = serializers.FloatField()
    max_rows_per_hour = serializers.IntegerField()
    status = serializers.CharField()
    stop_reason = serializers.CharField()
    created_by = serializers.EmailField(source="created_by.email", default=None)
    created_at = serializers.DateTimeField()
    stopped_at = serializers.DateTimeField()
    rows_mirrored = serializers.SerializerMethodField()
    rows_over_cap = serializers.SerializerMethodField()
    rows_compared = serializers.SerializerMethodField()
    agreement = serializers.SerializerMethodField()
    report = serializers.SerializerMethodField()
    report_updated_at = serializers.SerializerMethodField()

    def _row(self, mirror):
        return mirror_reports.report_of(mirror=mirror)

    def get_rows_mirrored(self, mirror) -> int:
        row = self._row(mirror)
        return row.rows_mirrored if row else 0

    def get_rows_over_cap(self, mirror) -> int:
        row = self._row(mirror)
        return row.rows_over_cap if row else 0

    def get_rows_compared(self, mirror) -> int | None:
        row = self._row(mirror)
        return row.rows_compared if row else None

    def get_agreement(self, mirror) -> float | None:
        row = self._row(mirror)
        return row.agreement if row else None

    def get_report(self, mirror) -> dict:
        row = self._row(mirror)
        return row.report if row else {}

    def get_report_updated_at(self, mirror) -> str | None:
        row = self._row(mirror)
        return row.updated_at.isoformat() if row and row.report else None


class MirrorApi(APIView):
    class InputSerializer(StrictSerializer):
        version = serializers.IntegerField(
            min_value=1, help_text="The candidate: the version that predicts the mirrored requests."
        )
        fraction = serializers.FloatField(help_text="Share of production's requests mirrored: above 0, at most 0.5.")
        max_rows_per_hour = serializers.IntegerField(
            required=False, help_text="Rows the candidate predicts in any hour (default MIRROR_DEFAULT_ROWS_PER_HOUR)."
        )

    @extend_schema(
        responses={200: MirrorOutputSerializer},
        description="The running mirror, or the newest stopped one, with its report; 404 when the model never had one.",
    )
    def get(self, request, org: str, model: str):
        _, registered = resolve_model(request, org, model)
        mirror = mirror_selectors.current_mirror(model=registered)
        if mirror is None:
            raise NotFound(
                f"{registered.full_name} has no mirror; start one with POST /api/v1/models/{registered.full_name}/mirror."
            )
        return Response(MirrorOutputSerializer(mirror).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: MirrorOutputSerializer},
        description="Start mirroring: `fraction` of production's requests (drawn on the hot path, nothing else done there) are "
        "predicted again by `version` on the worker after their answer has left, within `max_rows_per_hour`, and compared with "
        "production's recorded answers; GET shows the report as it accumulates. Owners and admins only; "
        "one mirror per model (409).",
    )
    def post(self, request, org: str, model: str):
        caller, registered = resolve_model(request, org, model, min_role=Role.ADMIN)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        mirror = mirror_services.start_mirror(
            caller=caller,
            model=registered,
            version_number=data.validated_data["version"],
            fraction=data.validated_data["fraction"],
            max_rows_per_hour=data.validated_data.get("max_rows_per_hour"),
        )
        return Response(
            MirrorOutputSerializer(mirror).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": f"/api/v1/models/{registered.full_name}/mirror"},
        )


class MirrorStopApi(APIView):
    @extend_schema(
        request=None,
        responses={200: MirrorOutputSerializer},
        description="Stop the running mirror (409 when none runs); its report stays.",
    )
    def post(self, request, org: str, model: str):
        caller, registered = resolve_model(request, org, model, min_role=Role.ADMIN)
        mirror = mirror_services.stop_mirror(caller=caller, model=registered)
        return Response(MirrorOutputSerializer(mirror).data)


class ExperimentResultsApi(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request, experiment_id: int):
        experiment = experiment_for_caller(caller=caller_from_request(request), experiment_id=experiment_id)
        return Response(experiment_results(experiment=experiment))


class AlertSettingsApi(APIView):
    class InputSerializer(StrictSerializer):
        drift_webhook_url = serializers.URLField(max_length=500, allow_blank=True, required=False)
        rotate_secret = serializers.BooleanField(required=False, default=False)

    class OutputSerializer(serializers.Serializer):
        organization = serializers.CharField(source="organization.slug")
        drift_webhook_url = serializers.CharField()
        secret_prefix = serializers.SerializerMethodField()
        updated_at = serializers.DateTimeField()

        def get_secret_prefix(self, row) -> str | None:
            return row.drift_webhook_secret[:10] if row.drift_webhook_secret else None

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request, org: str):
        organization = organization_for_caller(caller=caller_from_request(request), slug=org, min_role=Role.ADMIN)
        row = AlertSettings.objects.filter(organization=organization).first() or AlertSettings(organization=organization)
        return Response(self.OutputSerializer(row).data)

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def patch(self, request, org: str):
        caller = caller_from_request(request)
        organization = organization_for_caller(caller=caller, slug=org, min_role=Role.ADMIN)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row, secret = alerts.update_alert_settings(caller=caller, organization=organization, **data.validated_data)
        body = self.OutputSerializer(row).data
        if secret is not None:
            body["secret"] = secret  # shown once; sign-checking receivers need it
        return Response(body)
