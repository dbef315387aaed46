from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "analytics"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from analytics.selectors.drift import drift_gauge_samples
        from platform_site.metrics import SCRAPE_HOOKS

        # modelhost_drift_detected reads the latest report per production version at scrape time.
        SCRAPE_HOOKS["drift"] = drift_gauge_samples

        from analytics.services.promotion_gate import require_replay
        from registry.services import promotion_checks

        promotion_checks["require_replay"] = require_replay
