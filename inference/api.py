"""REST API for inference outside the hot path: feedback on predictions."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.principals import caller_from_request
from inference import services
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
