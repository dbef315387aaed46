from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from inference import views_protocols
from platform_site import health
from platform_site.metrics import metrics_view
from platform_site.views import api_not_found

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="prometheus-django-metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("accounts.urls")),
    path("api/v1/", include("registry.urls")),
    path("api/v1/", include("inference.urls")),
    path("api/v1/", include("inference.batch.urls")),
    path("api/v1/", include("inference.experiments.urls")),
    path("api/v1/", include("analytics.urls")),
    path("api/<path:rest>", api_not_found),
    path("v2", views_protocols.v2_server_metadata, name="v2-server"),
    path("v2/", include("inference.urls_v2")),
    path("", include("accounts.web_urls")),
    path("", include("registry.web_urls")),
    path("", include("inference.web_urls")),
    path("", include("inference.batch.web_urls")),
    path("", include("analytics.web_urls")),
]
