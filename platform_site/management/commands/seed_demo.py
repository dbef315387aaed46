"""Create (or refresh) the demo account `make run` prints, so a newcomer can click around."""

from __future__ import annotations

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey, Membership, Organization, Role, User
from accounts.principals import Caller

DEMO_EMAIL = "demo@modelhost.local"
DEMO_PASSWORD = "modelhost-demo-password"
DEMO_ORG = "demo"
DEMO_KEY_NAME = "demo key (make run)"


class Command(BaseCommand):
    help = "Create the demo user, organization and a fresh demo API key, and print them."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--quiet", action="store_true", help="Print only the API key.")
        parser.add_argument(
            "--migrate", action="store_true", help="Apply the migrations first (make run: one Django start for both)."
        )

    def handle(self, *args, quiet: bool = False, migrate: bool = False, **options) -> None:
        if migrate:
            call_command("migrate", interactive=False, verbosity=0, skip_checks=True)
        if settings.REDIS_URL == f"unix://{settings.EMBEDDED_REDIS_SOCKET}":
            # make run starts the embedded Redis beside this command, not before it.
            from platform_site import embedded_redis

            embedded_redis.wait()
        self._seed(quiet=quiet)

    @transaction.atomic
    def _seed(self, *, quiet: bool) -> None:
        user = User.objects.filter(email=DEMO_EMAIL).first()
        if user is None:
            user = User.objects.create_user(
                email=DEMO_EMAIL, password=DEMO_PASSWORD, name="Demo User", is_staff=True, is_superuser=True
            )
        caller = Caller(user=user, ip_address="127.0.0.1")
        org = Organization.objects.filter(slug=DEMO_ORG).first()
        if org is None:
            org = services.create_organization(caller=caller, name="Demo", slug=DEMO_ORG)
        Membership.objects.get_or_create(user=user, organization=org, defaults={"role": Role.OWNER})
        # Only a hash is stored, so each run makes a fresh key and retires the last one.
        ApiKey.objects.filter(organization=org, name=DEMO_KEY_NAME, revoked_at__isnull=True).update(revoked_at=timezone.now())
        _, plaintext = services.create_api_key(
            caller=caller, organization=org, name=DEMO_KEY_NAME, scopes=["predict", "read", "write", "admin"]
        )
        extra = self._seed_models(caller=caller, organization=org)
        if quiet:
            self.stdout.write(plaintext)
            return
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "Demo account",
                    "  web UI:        http://127.0.0.1:8000/login/  (also the Django admin at /admin/)",
                    f"  email:         {DEMO_EMAIL}",
                    f"  password:      {DEMO_PASSWORD}",
                    f"  organization:  {org.slug}",
                    f"  API key:       {plaintext}",
                    *extra,
                    "",
                ]
            )
        )

    def _seed_models(self, *, caller: Caller, organization: Organization) -> list[str]:
        """The demo model, uploaded through the same safe path as any other; lines to print."""
        from registry.demo import seed_demo_model

        model = seed_demo_model(caller=caller, organization=organization)
        return [f"  demo model:    {model.full_name} (production version {model.production_version.number})"]
