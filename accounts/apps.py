from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import platform_site.openapi  # noqa: F401  (registers the auth schemes with drf-spectacular)
