"""REST API for experiments: list and start them on a model, read, stop and promote by id."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.principals import caller_from_request
from inference.experiments import selectors, services
from inference.models import Experiment
from platform_site.pagination import paginated
from platform_site.serializers import StrictSerializer
from registry.api import RequireReplaySerializer, resolve_model


class VariantOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    weight = serializers.IntegerField()


class ReleaseSummarySerializer(serializers.Serializer):
    number = serializers.IntegerField()
    kind = serializers.CharField()
    from_version = serializers.IntegerField(source="from_version.number", default=None)
    to_version = serializers.IntegerField(source="to_version.number", default=None)
    created_at = serializers.DateTimeField()


class ExperimentOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    model = serializers.CharField(source="registered_model.full_name")
    name = serializers.CharField()
    status = serializers.CharField()
    metric = serializers.CharField()
    min_samples = serializers.IntegerField()
    variants = serializers.SerializerMethodField()
    control = serializers.SerializerMethodField()
    winner_version = serializers.IntegerField(source="winner_version.number", default=None)
    created_by = serializers.EmailField(source="created_by.email", default=None)
    created_at = serializers.DateTimeField()
    stopped_at = serializers.DateTimeField()

    def get_variants(self, experiment) -> list[dict]:
        return VariantOutputSerializer(experiment.variants, many=True).data

    def get_control(self, experiment) -> int:
        return experiment.variants[0]["version"]


class VariantInputSerializer(StrictSerializer):
    version = serializers.IntegerField(min_value=1)
    weight = serializers.IntegerField()


class ExperimentListApi(APIView):
    class InputSerializer(StrictSerializer):
        name = serializers.CharField(max_length=100)
        variants = VariantInputSerializer(many=True)
        metric = serializers.ChoiceField(
            choices=Experiment.Metric.values,
            default="accuracy",
            help_text="accuracy (classifiers, outlier detectors; higher is better), mae or rmse (regressors' predictions against "
            "the "
            "true values sent as feedback; lower is better).",
        )
        min_samples = serializers.IntegerField(min_value=1, max_value=10_000_000, required=False)

    @extend_schema(responses={200: ExperimentOutputSerializer(many=True)})
    def get(self, request, org: str, model: str):
        _, registered = resolve_model(request, org, model)
        return paginated(request, self, selectors.experiments_of(model=registered), ExperimentOutputSerializer)

    @extend_schema(request=InputSerializer, responses={201: ExperimentOutputSerializer})
    def post(self, request, org: str, model: str):
        caller, registered = resolve_model(request, org, model, min_role=Role.MEMBER)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        experiment = services.create_experiment(caller=caller, model=registered, **data.validated_data)
        return Response(ExperimentOutputSerializer(experiment).data, status=status.HTTP_201_CREATED)


class ExperimentDetailApi(APIView):
    @extend_schema(responses={200: ExperimentOutputSerializer})
    def get(self, request, experiment_id: int):
        experiment = selectors.experiment_for_caller(caller=caller_from_request(request), experiment_id=experiment_id)
        return Response(ExperimentOutputSerializer(experiment).data)


class ExperimentStopApi(APIView):
    @extend_schema(request=None, responses={200: ExperimentOutputSerializer})
    def post(self, request, experiment_id: int):
        caller = caller_from_request(request)
        experiment = selectors.experiment_for_caller(caller=caller, experiment_id=experiment_id, min_role=Role.MEMBER)
        experiment = services.stop_experiment(caller=caller, experiment=experiment)
        return Response(ExperimentOutputSerializer(experiment).data)


class ExperimentPromoteApi(APIView):
    class InputSerializer(StrictSerializer):
        version = serializers.IntegerField(min_value=1)
        reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")
        require_replay = RequireReplaySerializer(required=False)

    class OutputSerializer(serializers.Serializer):
        experiment = ExperimentOutputSerializer()
        release = ReleaseSummarySerializer(allow_null=True)

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    def post(self, request, experiment_id: int):
        caller = caller_from_request(request)
        experiment = selectors.experiment_for_caller(caller=caller, experiment_id=experiment_id, min_role=Role.MEMBER)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        experiment, release = services.promote_winner(
            caller=caller,
            experiment=experiment,
            version_number=data.validated_data["version"],
            reason=data.validated_data["reason"],
            require_replay=data.validated_data.get("require_replay"),
        )
        return Response(self.OutputSerializer({"experiment": experiment, "release": release}).data)
