from django.urls import path

from registry import views

urlpatterns = [
    path("orgs/<slug:org>/", views.model_list, name="org-home"),
    path("orgs/<slug:org>/models/new/", views.model_create, name="model-create"),
    path("models/<slug:org>/<slug:model>/", views.model_detail, name="model-detail"),
    path("models/<slug:org>/<slug:model>/versions/new/", views.version_upload, name="version-upload"),
    path("models/<slug:org>/<slug:model>/versions/<int:number>/stage/", views.version_stage, name="version-stage"),
    path("models/<slug:org>/<slug:model>/rollback/", views.model_rollback, name="model-rollback"),
    path("models/<slug:org>/<slug:model>/delete/", views.model_delete, name="model-delete"),
]
