from django.urls import path

from analytics import views

urlpatterns = [
    path("models/<slug:org>/<slug:model>/usage/", views.model_usage, name="model-usage"),
    path("models/<slug:org>/<slug:model>/drift/", views.drift_reports, name="drift-reports"),
    path("models/<slug:org>/<slug:model>/drift/<int:report_id>/", views.drift_report, name="drift-report"),
    path("models/<slug:org>/<slug:model>/compare/", views.replays, name="replays"),
    path("models/<slug:org>/<slug:model>/compare/<int:replay_id>/", views.replay, name="replay"),
    path("models/<slug:org>/<slug:model>/compare/mirror/", views.mirror_start, name="mirror-start"),
    path("models/<slug:org>/<slug:model>/compare/mirror/stop/", views.mirror_stop, name="mirror-stop"),
    path("models/<slug:org>/<slug:model>/experiments/", views.experiments, name="experiments"),
    path("models/<slug:org>/<slug:model>/experiments/<int:experiment_id>/", views.experiment_detail, name="experiment-detail"),
    path("models/<slug:org>/<slug:model>/experiments/<int:experiment_id>/stop/", views.experiment_stop, name="experiment-stop"),
    path(
        "models/<slug:org>/<slug:model>/experiments/<int:experiment_id>/promote/",
        views.experiment_promote,
        name="experiment-promote",
    ),
]
