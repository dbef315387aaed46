"""Fixtures for the web pages: signed-in Django test clients and a model with versions."""
from __future__ import annotations

import pytest
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

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris", description="Iris flowers")
    create_version(model)
    create_version(model)
    model.refresh_from_db()
    return model


__all__ = ["PASSWORD", "member_of", "signed_in"]
