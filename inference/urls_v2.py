"""Open Inference Protocol (KServe V2) paths, mounted at /v2."""

from django.urls import path

from inference import views_protocols as views

urlpatterns = [
    path("", views.v2_server_metadata, name="v2-server-slash"),
    path("health/live", views.v2_live, name="v2-live"),
    path("health/ready", views.v2_ready, name="v2-ready"),
    path("models/<slug:model>", views.v2_model_metadata, name="v2-model"),
    path("models/<slug:model>/ready", views.v2_model_ready, name="v2-model-ready"),
    path("models/<slug:model>/infer", views.v2_infer, name="v2-infer"),
    path("models/<slug:model>/versions/<int:number>", views.v2_model_metadata, name="v2-model-version"),
    path("models/<slug:model>/versions/<int:number>/ready", views.v2_model_ready, name="v2-model-version-ready"),
    path("models/<slug:model>/versions/<int:number>/infer", views.v2_infer, name="v2-infer-version"),
]
