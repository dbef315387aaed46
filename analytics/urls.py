from django.urls import path

from analytics import api

urlpatterns = [
    path("models/<slug:org>/<slug:model>/usage", api.UsageApi.as_view(), name="api-usage"),
    path("models/<slug:org>/<slug:model>/quality", api.QualityApi.as_view(), name="api-quality"),
    path("models/<slug:org>/<slug:model>/drift-reports", api.DriftReportListApi.as_view(), name="api-drift-reports"),
    path("drift-reports/<int:report_id>", api.DriftReportDetailApi.as_view(), name="api-drift-report"),
    path("models/<slug:org>/<slug:model>/replays", api.ModelReplayListApi.as_view(), name="api-model-replays"),
    path("models/<slug:org>/<slug:model>/versions/<int:number>/replays", api.ReplayListApi.as_view(), name="api-replays"),
    path(
        "models/<slug:org>/<slug:model>/versions/<int:number>/replays/<int:replay_id>",
        api.ReplayDetailApi.as_view(),
        name="api-replay",
    ),
    path("models/<slug:org>/<slug:model>/mirror", api.MirrorApi.as_view(), name="api-mirror"),
    path("models/<slug:org>/<slug:model>/mirror/stop", api.MirrorStopApi.as_view(), name="api-mirror-stop"),
    path("experiments/<int:experiment_id>/results", api.ExperimentResultsApi.as_view(), name="api-experiment-results"),
    path("orgs/<slug:org>/alert-settings", api.AlertSettingsApi.as_view(), name="api-alert-settings"),
]
