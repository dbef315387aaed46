from django.urls import path

from analytics import views

urlpatterns = [
    path("models/<slug:org>/<slug:model>/usage/", views.model_usage, name="model-usage"),
]
