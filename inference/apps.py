from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from inference import signals  # noqa: F401  (connects the receivers)
        from inference.runners.client import host_metric_samples
        from platform_site.metrics import SCRAPE_HOOKS

        SCRAPE_HOOKS["runners"] = host_metric_samples
