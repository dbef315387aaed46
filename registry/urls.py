from django.urls import path

from registry import api

urlpatterns = [
    path("models", api.ModelListApi.as_view(), name="api-models"),
    path("models/<slug:org>/<slug:model>", api.ModelDetailApi.as_view(), name="api-model"),
    path("models/<slug:org>/<slug:model>/versions", api.VersionListApi.as_view(), name="api-versions"),
    path(
        "models/<slug:org>/<slug:model>/versions/import-mlflow",
        api.VersionImportMlflowApi.as_view(),
        name="api-versions-import-mlflow",
    ),
    path("models/<slug:org>/<slug:model>/versions/<int:number>", api.VersionDetailApi.as_view(), name="api-version"),
    path("models/<slug:org>/<slug:model>/versions/<int:number>/stage", api.VersionStageApi.as_view(), name="api-version-stage"),
    path("models/<slug:org>/<slug:model>/rollback", api.ModelRollbackApi.as_view(), name="api-model-rollback"),
    path("models/<slug:org>/<slug:model>/releases", api.ReleaseListApi.as_view(), name="api-releases"),
]
