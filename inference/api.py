"""REST API for inference outside the hot path: feedback on predictions, webhook deliveries."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.principals import caller_from_request
from accounts.selectors import organization_for_caller
from inference import selectors, services
from platform_site.pagination import Pagination, paginated
from platform_site.serializers import StrictSerializer


class FeedbackOutputSerializer(serializers.Serializer):
    prediction_id = serializers.CharField()
    version = serializers.IntegerField(source="version.number")
    label = serializers.JSONField()
    value = serializers.FloatField()
    created_at = serializers.DateTimeField()


class FeedbackApi(APIView):
    class InputSerializer(StrictSerializer):
        label = serializers.JSONField(required=False)
        value = serializers.JSONField(required=False)

    OutputSerializer = FeedbackOutputSerializer

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer, 200: OutputSerializer})
    def post(self, request, prediction_id: str):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        feedback, created = services.record_feedback(
            caller=caller_from_request(request),
            prediction_id=prediction_id,
            label=fields.get("label"),
            value=fields.get("value"),
            has_label="label" in fields,
            has_value="value" in fields,
        )
        return Response(self.OutputSerializer(feedback).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class WebhookDeliveryOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    subject = serializers.CharField()
    event = serializers.CharField()
    delivery_id = serializers.CharField()
    url = serializers.CharField()
    status_code = serializers.IntegerField(allow_null=True)
    is_delivered = serializers.BooleanField()
    error = serializers.CharField()
    duration_ms = serializers.FloatField()
    created_at = serializers.DateTimeField()


class WebhookDeliveryListApi(APIView):
    pagination_class = Pagination

    @extend_schema(
        responses={200: WebhookDeliveryOutputSerializer(many=True)},
        parameters=[
            OpenApiParameter("subject", str, description="Only attempts about this, e.g. batch_job:12 or drift_report:5.")
        ],
    )
    def get(self, request, org: str):
        organization = organization_for_caller(caller=caller_from_request(request), slug=org)
        deliveries = selectors.webhook_deliveries_of(organization=organization, subject=request.query_params.get("subject"))
        return paginated(request, self, deliveries, WebhookDeliveryOutputSerializer)
