"""REST API for the registry: models, versions (upload, MLflow import), stages, releases."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.principals import caller_from_request
from accounts.selectors import organization_for_caller
from platform_site.errors import InvalidInput, PayloadTooLarge
from platform_site.pagination import Pagination, paginated
from platform_site.parsers import OrjsonParser
from platform_site.serializers import StrictSerializer
from registry import selectors, services, signatures
from registry.models import CompiledStatus


class ModelOutputSerializer(serializers.Serializer):
    org = serializers.CharField(source="organization.slug")
    name = serializers.CharField()
    full_name = serializers.CharField()
    description = serializers.CharField()
    task = serializers.CharField()
    production_version = serializers.IntegerField(source="production_version.number", default=None)
    prediction_cache_ttl = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ServingOutputSerializer(serializers.Serializer):
    """Where the version's predictions run, and whether they keep stopping its runner."""

    path = serializers.CharField(source="serving_path", help_text='"web" (plain numbers the platform evaluates) or "runner".')
    failing = serializers.BooleanField(source="is_failing")
    runner_crashes = serializers.IntegerField()
    last_crash_at = serializers.DateTimeField(source="runner_last_crash_at", allow_null=True)


class CompiledOutputSerializer(serializers.Serializer):
    """The owner's choice about the compiled form, and what its verification found."""

    enabled = serializers.BooleanField(
        source="use_compiled",
        help_text='false: the owner keeps the version on scikit-learn (PATCH the version with {"compiled": ...} to change it).',
    )
    status = serializers.ChoiceField(
        source="compiled_status",
        choices=CompiledStatus.choices,
        help_text='"compiling": a worker is building and verifying the compiled form after the upload (scikit-learn serves until '
        'then); "verified": served compiled; "off": the owner\'s choice; "none": not a tree ensemble the platform compiles, or '
        "its check failed.",
    )
    check = serializers.JSONField(
        source="compiled_figures",
        help_text="The verification against scikit-learn: rows_compared, label_disagreements, max_abs_diff, max_rel_diff, "
        "tolerance, passed ({} when nothing was compiled).",
    )


class VersionOutputSerializer(serializers.Serializer):
    model = serializers.CharField(source="registered_model.full_name")
    number = serializers.IntegerField()
    stage = serializers.CharField()
    sha256 = serializers.CharField()
    size_bytes = serializers.IntegerField()
    format = serializers.CharField()
    sklearn_version = serializers.CharField()
    serving_sklearn_version = serializers.CharField()
    sklearn_version_mismatch = serializers.SerializerMethodField()
    warnings = serializers.JSONField()
    estimator_class = serializers.CharField()
    final_estimator_class = serializers.CharField()
    task = serializers.CharField()
    classes = serializers.JSONField()
    has_predict_proba = serializers.BooleanField()
    n_features = serializers.IntegerField()
    feature_names = serializers.SerializerMethodField()
    signature = serializers.JSONField()
    input_example = serializers.JSONField()
    reference_rows = serializers.IntegerField()
    metrics = serializers.JSONField()
    params = serializers.JSONField()
    description = serializers.CharField()
    source = serializers.CharField()
    load_seconds = serializers.FloatField()
    serving = ServingOutputSerializer(source="*")
    runtime = serializers.ChoiceField(
        choices=["onnx", "sklearn"],
        help_text=(
            'What computes predictions in the runner: "onnx", the tree ensemble\'s compiled form, verified after the upload to '
            'give scikit-learn\'s answers bit for bit; "sklearn", scikit-learn itself (also while the compiled form is being '
            'made: compiled.status "compiling").'
        ),
    )
    runtime_reason = serializers.CharField(
        help_text="Why this runtime: the verification's result, or why the version has no compiled form."
    )
    compiled = CompiledOutputSerializer(source="*")
    created_by = serializers.EmailField(source="created_by.email", default=None)
    created_at = serializers.DateTimeField()

    def get_sklearn_version_mismatch(self, version) -> bool:
        return bool(version.sklearn_version) and version.sklearn_version != version.serving_sklearn_version

    def get_feature_names(self, version) -> list[str]:
        return signatures.column_names(version.signature)


class ReleaseOutputSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    kind = serializers.CharField()
    from_version = serializers.IntegerField(source="from_version.number", default=None)
    to_version = serializers.IntegerField(source="to_version.number", default=None)
    reason = serializers.CharField()
    actor = serializers.EmailField(source="actor.email", default=None)
    actor_api_key = serializers.CharField(source="actor_api_key_prefix")
    created_at = serializers.DateTimeField()


class ModelListApi(APIView):
    pagination_class = Pagination

    class InputSerializer(StrictSerializer):
        org = serializers.SlugField()
        name = serializers.CharField(max_length=100)
        description = serializers.CharField(required=False, allow_blank=True, default="")
        task = serializers.CharField(required=False, allow_blank=True, default="")

    @extend_schema(
        responses={200: ModelOutputSerializer(many=True)},
        operation_id="v1_models_list",
        parameters=[
            OpenApiParameter("q", str, description="Name contains"),
            OpenApiParameter("org", str, description="Only this organization"),
        ],
    )
    def get(self, request):
        models = selectors.models_for_caller(caller=caller_from_request(request))
        query = request.query_params.get("q")
        if query:
            models = models.filter(name__icontains=query)
        org = request.query_params.get("org")
        if org:
            models = models.filter(organization__slug=org)
        return paginated(request, self, models, ModelOutputSerializer)

    @extend_schema(request=InputSerializer, responses={201: ModelOutputSerializer})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        caller = caller_from_request(request)
        fields = dict(data.validated_data)
        organization = organization_for_caller(caller=caller, slug=fields.pop("org"), min_role=Role.MEMBER)
        model = services.create_model(caller=caller, organization=organization, **fields)
        return Response(ModelOutputSerializer(model).data, status=status.HTTP_201_CREATED)


def resolve_model(request, org: str, model: str, *, min_role: str = Role.VIEWER):
    caller = caller_from_request(request)
    organization = organization_for_caller(caller=caller, slug=org, min_role=min_role)
    return caller, selectors.model_in(organization=organization, name=model)


class ModelDetailApi(APIView):
    class InputSerializer(StrictSerializer):
        description = serializers.CharField(required=False, allow_blank=True)
        prediction_cache_ttl = serializers.IntegerField(required=False, min_value=0, max_value=7 * 24 * 3600)

    @extend_schema(responses={200: ModelOutputSerializer})
    def get(self, request, org: str, model: str):
        _, registered = resolve_model(request, org, model)
        return Response(ModelOutputSerializer(registered).data)

    @extend_schema(request=InputSerializer, responses={200: ModelOutputSerializer})
    def patch(self, request, org: str, model: str):
        caller, registered = resolve_model(request, org, model, min_role=Role.MEMBER)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.update_model(caller=caller, model=registered, **data.validated_data)
        return Response(ModelOutputSerializer(registered).data)

    @extend_schema(
        responses={204: None},
        description="Soft delete: the model stops serving and its name is freed; versions are kept for audit.",
    )
    def delete(self, request, org: str, model: str):
        caller, registered = resolve_model(request, org, model, min_role=Role.ADMIN)
        services.delete_model(caller=caller, model=registered)
        return Response(status=status.HTTP_204_NO_CONTENT)


class VersionListApi(APIView):
    pagination_class = Pagination

    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(responses={200: VersionOutputSerializer(many=True)})
    def get(self, request, org: str, model: str):
        _, registered = resolve_model(request, org, model)
        return paginated(request, self, selectors.versions_of(model=registered), VersionOutputSerializer)

    @extend_schema(
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "reference_data": {"type": "string", "format": "binary"},
                    "input_example": {"type": "string", "description": "JSON"},
                    "metrics": {"type": "string", "description": "JSON object of numbers"},
                    "params": {"type": "string", "description": "JSON object"},
                    "description": {"type": "string"},
                    "compiled": {
                        "type": "boolean",
                        "default": True,
                        "description": (
                            "false: serve this version with scikit-learn even when it is a tree ensemble with a verified "
                            "compiled form"
                        ),
                    },
                },
                "required": ["file"],
            }
        },
        responses={201: VersionOutputSerializer},
    )
    def post(self, request, org: str, model: str):
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        limit = services.max_upload_bytes()
        if length > limit + 16 * 1024 * 1024:  # the model file plus room for the other parts
            raise PayloadTooLarge(f"The upload is larger than the limit of {limit // (1024 * 1024)} MiB.")
        caller, registered = resolve_model(request, org, model, min_role=Role.MEMBER)
        known = {"file", "reference_data", "input_example", "metrics", "params", "description", "compiled"}
        unknown = sorted((set(request.data.keys()) | set(request.FILES.keys())) - known)
        if unknown:
            raise InvalidInput(
                f"Unknown field(s): {', '.join(unknown)}.",
                errors=[{"field": name, "message": "Unknown field."} for name in unknown],
            )
        file = request.FILES.get("file")
        if file is None:
            raise InvalidInput(
                "Send the model as a multipart field named 'file'.", errors=[{"field": "file", "message": "required"}]
            )
        version = services.upload_version(
            caller=caller,
            model=registered,
            file=file,
            reference_data=request.FILES.get("reference_data"),
            input_example=signatures.parse_json_field(
                request.data.get("input_example") or request.FILES.get("input_example"), field="input_example"
            ),
            metrics=signatures.parse_json_field(request.data.get("metrics"), field="metrics"),
            params=signatures.parse_json_field(request.data.get("params"), field="params"),
            description=request.data.get("description", ""),
            use_compiled=_form_boolean(request.data.get("compiled"), field="compiled", default=True),
        )
        return Response(VersionOutputSerializer(version).data, status=status.HTTP_201_CREATED)


def _form_boolean(value, *, field: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise InvalidInput(
        f"{field} must be true or false, not {str(value)[:40]!r}.", errors=[{"field": field, "message": "expected true or false"}]
    )


class VersionImportMlflowApi(APIView):
    parser_classes = [OrjsonParser]

    class InputSerializer(StrictSerializer):
        model_uri = serializers.CharField(max_length=500)
        description = serializers.CharField(required=False, allow_blank=True, default="")

    @extend_schema(request=InputSerializer, responses={201: VersionOutputSerializer})
    def post(self, request, org: str, model: str):
        caller, registered = resolve_model(request, org, model, min_role=Role.MEMBER)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.import_mlflow_version(caller=caller, model=registered, **data.validated_data)
        return Response(VersionOutputSerializer(version).data, status=status.HTTP_201_CREATED)


class VersionDetailApi(APIView):
    parser_classes = [OrjsonParser]

    class InputSerializer(StrictSerializer):
        compiled = serializers.BooleanField(
            help_text="false: serve the version with scikit-learn; true: with its verified compiled form, when it has one."
        )

    @extend_schema(responses={200: VersionOutputSerializer})
    def get(self, request, org: str, model: str, number: int):
        _, registered = resolve_model(request, org, model)
        return Response(VersionOutputSerializer(selectors.version_of(model=registered, number=number)).data)

    @extend_schema(
        request=InputSerializer,
        responses={200: VersionOutputSerializer},
        description="Turn the version's compiled form off or on.",
    )
    def patch(self, request, org: str, model: str, number: int):
        caller, registered = resolve_model(request, org, model, min_role=Role.MEMBER)
        version = selectors.version_of(model=registered, number=number)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.set_compiled_use(caller=caller, version=version, use_compiled=data.validated_data["compiled"])
        return Response(VersionOutputSerializer(version).data)


class RequireReplaySerializer(StrictSerializer):
    """The condition a promotion may carry: the newest replay or live mirror of the version
    against the current production version agrees on at least this share of its rows."""

    min_agreement = serializers.FloatField(
        min_value=0.0, max_value=1.0, help_text="Share of rows answered alike; rows the version failed on count as disagreeing."
    )
    min_rows = serializers.IntegerField(min_value=1, required=False, help_text="Rows the replay must have compared (default 1).")


class VersionStageApi(APIView):
    class InputSerializer(StrictSerializer):
        stage = serializers.CharField()
        reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")
        require_replay = RequireReplaySerializer(required=False)

    @extend_schema(
        request=InputSerializer,
        responses={200: VersionOutputSerializer},
        description="With `require_replay`, a promotion happens only when the newest replay (or live mirror) of this version "
        "against the current production version agrees on at least `min_agreement` of its rows; otherwise 409, quoting that "
        "replay (`replay`) or saying none exists.",
    )
    def post(self, request, org: str, model: str, number: int):
        caller, registered = resolve_model(request, org, model, min_role=Role.MEMBER)
        version = selectors.version_of(model=registered, number=number)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.set_stage(caller=caller, version=version, **data.validated_data)
        return Response(VersionOutputSerializer(version).data)


class ModelRollbackApi(APIView):
    class InputSerializer(StrictSerializer):
        reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")

    @extend_schema(request=InputSerializer, responses={200: ReleaseOutputSerializer})
    def post(self, request, org: str, model: str):
        caller, registered = resolve_model(request, org, model, min_role=Role.MEMBER)
        data = self.InputSerializer(data=request.data or {})
        data.is_valid(raise_exception=True)
        release = services.rollback(caller=caller, model=registered, **data.validated_data)
        return Response(ReleaseOutputSerializer(release).data)


class ReleaseListApi(APIView):
    pagination_class = Pagination

    @extend_schema(responses={200: ReleaseOutputSerializer(many=True)})
    def get(self, request, org: str, model: str):
        _, registered = resolve_model(request, org, model)
        return paginated(request, self, selectors.releases_of(model=registered), ReleaseOutputSerializer)
