"""Fixtures for the web pages: signed-in Django test clients and a model with versions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client

from accounts.models import Membership, Role
from accounts.tests.factories import PASSWORD, UserFactory


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def member_of(organization, role: str, email: str | None = None):
    user = UserFactory(email=email or f"{role}@{organization.slug}.example")
    Membership.objects.create(user=user, organization=organization, role=role)
    return user


@pytest.fixture
def owner_client(tenant_a) -> Client:
    return signed_in(tenant_a.user)


@pytest.fixture
def viewer_client(tenant_a) -> Client:
    return signed_in(member_of(tenant_a.organization, Role.VIEWER))


@pytest.fixture
def member_client(tenant_a) -> Client:
    return signed_in(member_of(tenant_a.organization, Role.MEMBER))


@pytest.fixture
def iris(tenant_a):
    """acme/iris with two loadable versions (no upload sandbox: fast)."""
    from accounts.principals import Caller
    from registry import services
    from registry.tests.factories import create_version

    model = services.create_model(
        caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris", description="Iris flowers"
    )
    create_version(model)
    create_version(model)
    model.refresh_from_db()
    return model


__all__ = ["PASSWORD", "member_of", "signed_in"]


# ---------------------------------------------------------------------------- the browser

CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium; Playwright's own browser download is not reachable from here.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """One Chromium per test module; Playwright gives each launch a fresh temporary profile,
    and each test opens its own context (cookies, storage)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_ui_tools.sh (as root) first.")
    from playwright.sync_api import sync_playwright

    # While Playwright's sync API is started, this thread has a running event loop, and Django
    # refuses ORM calls from it. Allow them only for as long as the browser lives: the flag
    # must not leak into later tests (`check --deploy` rightly fails on it).
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def web(settings, live_server):
    """The live server, with plain static storage: its static handler serves files by their
    own names, not the hashed names the manifest storage would put in the pages."""
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    return live_server


@pytest.fixture
def screenshots_dir():
    """Where page screenshots go: docs/screenshots via `make screenshots`, else var/screenshots."""
    folder = Path(os.environ.get("MODELHOST_SCREENSHOTS_DIR") or django_settings.BASE_DIR / "var" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
