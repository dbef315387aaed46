from django.urls import path

from inference import api, views_native, views_protocols

urlpatterns = [
    path("models/<slug:org>/<slug:model>/predict", views_native.predict, name="predict"),
    path("models/<slug:org>/<slug:model>/versions/<int:number>/predict", views_native.predict_version, name="predict-version"),
    path("models/<slug:org>/<slug:model>/invocations", views_protocols.invocations, name="invocations"),
    path(
        "models/<slug:org>/<slug:model>/versions/<int:number>/invocations",
        views_protocols.invocations,
        name="invocations-version",
    ),
    path("predictions/<str:prediction_id>/feedback", api.FeedbackApi.as_view(), name="api-feedback"),
    path("orgs/<slug:org>/webhook-deliveries", api.WebhookDeliveryListApi.as_view(), name="api-webhook-deliveries"),
]
