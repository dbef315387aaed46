"""Fixtures every app's tests share: API clients, tenants with credentials, clean caches."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.tests.factories import OrganizationFactory, UserFactory


@pytest.fixture(scope="session", autouse=True)
def _predictions_through_the_dispatcher():
    """Prediction requests enter through platform_site.dispatch, as in production."""
    from platform_site.tests import dispatching

    with pytest.MonkeyPatch.context() as patch:
        dispatching.install(patch)
        yield


@pytest.fixture(scope="session", autouse=True)
def _runner_host():
    """One real runner host for the session: every prediction of a non-linear model goes to it,
    and every upload check (its sandbox socket is MODEL_CHECK_SOCKET)."""
    from django.conf import settings

    from platform_site.tests.processes import start_runner_host

    address = settings.RUNNER_ADDRESSES[0]
    assert address.startswith("unix:"), "the suite starts its runner host on a Unix socket (RUNNER_ADDRESSES)"
    assert settings.MODEL_CHECK_SOCKET, "the suite's runner host serves the upload checks (MODEL_CHECK_SOCKET)"
    with start_runner_host(socket_path=address[len("unix:") :], sandbox_socket_path=settings.MODEL_CHECK_SOCKET) as host:
        yield host


@pytest.fixture(autouse=True)
def _clean_caches(settings):
    """Tests share one Redis database and this process's key cache; start each from empty."""
    from django.core.cache import cache

    from accounts.authentication import forget_cached_keys
    from inference import routing
    from inference.runners import client as runners
    from platform_site import redis_client

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    forget_cached_keys()
    routing.clear_routes()
    redis_client.reset()
    cache.clear()
    yield
    forget_cached_keys()
    routing.clear_routes()
    redis_client.reset()
    runners.close_all()


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@dataclass
class Tenant:
    """One organization with an owner, a JWT for them and an all-scopes API key."""

    user: object
    organization: object
    jwt: str
    api_key: str
    api_key_id: int
    password: str = "correct-horse-battery-staple"

    def jwt_client(self) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.jwt}")
        return client

    def key_client(self, key: str | None = None) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key or self.api_key}")
        return client


def make_tenant(slug: str) -> Tenant:
    from accounts import services
    from accounts.models import Membership, Role
    from accounts.principals import Caller

    user = UserFactory(email=f"owner@{slug}.example")
    organization = OrganizationFactory(slug=slug, name=slug.title())
    Membership.objects.create(user=user, organization=organization, role=Role.OWNER)
    key, plaintext = services.create_api_key(
        caller=Caller(user=user), organization=organization, name=f"{slug} key", scopes=["predict", "read", "write", "admin"]
    )
    return Tenant(
        user=user,
        organization=organization,
        jwt=str(RefreshToken.for_user(user).access_token),
        api_key=plaintext,
        api_key_id=key.id,
    )


@pytest.fixture
def tenant_a(db) -> Tenant:
    return make_tenant("acme")


@pytest.fixture
def tenant_b(db) -> Tenant:
    return make_tenant("globex")
