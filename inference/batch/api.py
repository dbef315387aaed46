"""REST API for batch jobs: submit a file, follow the job, download the result, cancel, list."""

from __future__ import annotations

from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.principals import caller_from_request
from inference.batch import selectors, services, storage
from inference.models import BatchJob
from platform_site.errors import InvalidInput, PayloadTooLarge
from platform_site.pagination import paginated
from platform_site.serializers import StrictSerializer
from registry.selectors import model_in

# Room for the multipart envelope and the small fields around the file.
MULTIPART_SLACK_BYTES = 1024 * 1024


class BatchJobOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    model = serializers.CharField(source="registered_model.full_name")
    version = serializers.IntegerField(source="version.number")
    status = serializers.CharField()
    format = serializers.CharField(source="input_format")
    filename = serializers.CharField(source="input_filename")
    compressed = serializers.BooleanField(source="input_compressed")
    input_bytes = serializers.IntegerField()
    on_error = serializers.CharField()
    probabilities = serializers.BooleanField(source="want_proba")
    rows_total = serializers.IntegerField(allow_null=True)
    rows_done = serializers.IntegerField()
    rows_failed = serializers.IntegerField()
    progress = serializers.FloatField()
    chunks_total = serializers.IntegerField(allow_null=True)
    chunks_done = serializers.IntegerField()
    error = serializers.SerializerMethodField()
    errors = serializers.JSONField()
    result = serializers.SerializerMethodField()
    result_bytes = serializers.IntegerField(allow_null=True)
    webhook = serializers.SerializerMethodField()
    created_by = serializers.EmailField(source="created_by.email", default=None)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField()

    def get_error(self, job: BatchJob) -> str | None:
        return job.error or None

    def get_result(self, job: BatchJob) -> str | None:
        return services.result_path(job) if job.status == BatchJob.Status.SUCCEEDED else None

    def get_webhook(self, job: BatchJob) -> dict | None:
        if not job.webhook_url:
            return None
        return {
            "url": job.webhook_url,
            "status": job.webhook_status or None,
            "attempts": job.webhook_attempts,
            "response_code": job.webhook_response_code,
            "last_error": job.webhook_last_error or None,
            "delivered_at": serializers.DateTimeField().to_representation(job.webhook_delivered_at)
            if job.webhook_delivered_at
            else None,
        }


class BatchJobCreatedSerializer(BatchJobOutputSerializer):
    webhook_secret = serializers.CharField(
        allow_null=True, help_text="Shown once: the key of the webhook's HMAC-SHA256 signature."
    )


def _filtered(request, queryset):
    wanted = request.query_params.get("status")
    if wanted:
        if wanted not in BatchJob.Status.values:
            raise InvalidInput(
                f"'{wanted}' is not a status; choose one of {', '.join(BatchJob.Status.values)}.",
                errors=[{"field": "status", "message": "unknown status"}],
            )
        queryset = queryset.filter(status=wanted)
    return queryset


class ModelBatchJobListApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(StrictSerializer):
        version = serializers.IntegerField(required=False, min_value=1)
        probabilities = serializers.BooleanField(required=False, default=False)
        on_error = serializers.ChoiceField(choices=BatchJob.OnError.values, required=False, default=BatchJob.OnError.FAIL)
        webhook = serializers.URLField(required=False, allow_blank=True, default="", max_length=2000)

        def validate_webhook(self, value: str) -> str:
            if value and not value.lower().startswith(("http://", "https://")):
                raise serializers.ValidationError("The webhook must be an http or https URL.")
            return value

    @extend_schema(responses={200: BatchJobOutputSerializer(many=True)})
    def get(self, request, org: str, model: str):
        organization = selectors.batch_organization(caller=caller_from_request(request), slug=org, write=False)
        registered = model_in(organization=organization, name=model)
        return paginated(request, self, _filtered(request, selectors.jobs_of_model(model=registered)), BatchJobOutputSerializer)

    @extend_schema(
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "CSV with a header row, or JSON lines; gzip accepted",
                    },
                    "version": {"type": "integer", "description": "default: the production version"},
                    "probabilities": {
                        "type": "boolean",
                        "default": False,
                        "description": (
                            "add a probability_<class> column per class (a classifier with predict_proba and one output)"
                        ),
                    },
                    "on_error": {"type": "string", "enum": BatchJob.OnError.values, "default": "fail"},
                    "webhook": {"type": "string", "format": "uri"},
                },
                "required": ["file"],
            }
        },
        responses={202: BatchJobCreatedSerializer},
    )
    def post(self, request, org: str, model: str):
        caller = caller_from_request(request)
        organization = selectors.batch_organization(caller=caller, slug=org, write=True)
        registered = model_in(organization=organization, name=model)
        limit = selectors.limits_for(organization=organization).max_file_bytes
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > limit + MULTIPART_SLACK_BYTES:  # refuse before reading the body
            raise PayloadTooLarge(
                f"The upload is {length} bytes; this organization's limit is {limit} bytes.",
                errors=[{"field": "file", "message": f"larger than {limit} bytes"}],
            )
        known = {"file", *self.InputSerializer().fields}
        unknown = sorted(set(request.data.keys()) - known)
        if unknown:
            raise InvalidInput(
                f"Unknown field(s): {', '.join(unknown)}.",
                errors=[{"field": name, "message": "Unknown field."} for name in unknown],
            )
        upload = request.FILES.get("file")
        if upload is None:
            raise InvalidInput(
                "Send the rows as a multipart field named 'file' (CSV with a header, or JSON lines).",
                errors=[{"field": "file", "message": "required"}],
            )
        data = self.InputSerializer(data={key: request.data.get(key) for key in request.data.keys() if key != "file"})
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        submission = services.submit_job(
            caller=caller,
            model=registered,
            upload=upload,
            version_number=fields.get("version"),
            want_proba=fields["probabilities"],
            on_error=fields["on_error"],
            webhook_url=fields["webhook"],
        )
        job = selectors.job_for_caller(caller=caller, job_id=submission.job.id)
        body = BatchJobOutputSerializer(job).data
        body["webhook_secret"] = submission.webhook_secret
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": f"/api/v1/batch-jobs/{job.id}"})


class BatchJobListApi(APIView):
    @extend_schema(responses={200: BatchJobOutputSerializer(many=True)})
    def get(self, request):
        jobs = _filtered(request, selectors.jobs_for_caller(caller=caller_from_request(request)))
        org = request.query_params.get("org")
        if org:
            jobs = jobs.filter(organization__slug=org)
        return paginated(request, self, jobs, BatchJobOutputSerializer)


class BatchJobDetailApi(APIView):
    @extend_schema(responses={200: BatchJobOutputSerializer})
    def get(self, request, job_id: int):
        job = selectors.job_for_caller(caller=caller_from_request(request), job_id=job_id)
        return Response(BatchJobOutputSerializer(job).data)


class BatchJobResultFile(FileResponse):
    block_size = 1024 * 1024  # Django's 4 KiB blocks make a large download CPU-bound


class BatchJobResultApi(APIView):
    @extend_schema(responses={(200, "text/csv"): bytes, (200, "application/x-ndjson"): bytes})
    def get(self, request, job_id: int):
        job = selectors.job_for_caller(caller=caller_from_request(request), job_id=job_id)
        name = services.result_name(job)
        is_csv = job.input_format == BatchJob.Format.CSV
        response = BatchJobResultFile(
            storage.open_for_reading(name),
            as_attachment=True,
            filename=f"batch-job-{job.id}-result.{job.input_format}",
            content_type="text/csv; charset=utf-8" if is_csv else "application/x-ndjson",
        )
        if job.result_bytes is not None:
            response["Content-Length"] = str(job.result_bytes)
        return response


class BatchJobCancelApi(APIView):
    @extend_schema(request=None, responses={200: BatchJobOutputSerializer})
    def post(self, request, job_id: int):
        caller = caller_from_request(request)
        job = selectors.job_for_caller(caller=caller, job_id=job_id, write=True)
        job = services.cancel_job(caller=caller, job=job)
        return Response(BatchJobOutputSerializer(selectors.job_for_caller(caller=caller, job_id=job.id)).data)
