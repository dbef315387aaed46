from django.urls import path

from inference.experiments import api

urlpatterns = [
    path("models/<slug:org>/<slug:model>/experiments", api.ExperimentListApi.as_view(), name="api-experiments"),
    path("experiments/<int:experiment_id>", api.ExperimentDetailApi.as_view(), name="api-experiment"),
    path("experiments/<int:experiment_id>/stop", api.ExperimentStopApi.as_view(), name="api-experiment-stop"),
    path("experiments/<int:experiment_id>/promote", api.ExperimentPromoteApi.as_view(), name="api-experiment-promote"),
]
