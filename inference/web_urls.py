from django.urls import path

from inference import views

urlpatterns = [
    path("models/<slug:org>/<slug:model>/versions/<int:number>/try/", views.try_version, name="version-try"),
    path("models/<slug:org>/<slug:model>/versions/<int:number>/importance/", views.version_importance, name="version-importance"),
]
