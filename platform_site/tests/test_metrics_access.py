"""/metrics names every organization and model: only a caller with METRICS_TOKEN reads it."""

import pytest

from registry.tests import factories as f

pytestmark = pytest.mark.django_db

TOKEN = "a-long-random-metrics-token-0123456789"


@pytest.fixture
def served(tenant_a, settings):
    """One prediction of acme/iris, so the metrics name the tenant and its model."""
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, promote=True)
    response = tenant_a.key_client().post("/api/v1/models/acme/iris/predict", {"inputs": [f.IRIS_ROW]}, format="json")
    assert response.status_code == 200
    settings.METRICS_TOKEN = TOKEN
    settings.DEBUG = False


def test_metrics_answer_the_bearer_token_with_every_tenants_series(served, client):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert 'org="acme"' in response.content.decode()


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param(f"Bearer {TOKEN}x", id="wrong-token"),
        pytest.param(f"Bearer {TOKEN[:-1]}", id="token-prefix"),
        pytest.param(f"Basic {TOKEN}", id="other-scheme"),
        pytest.param("Bearer ", id="empty-token"),
    ],
)
def test_metrics_without_the_token_are_401_and_name_no_tenant(served, client, authorization):
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    response = client.get("/metrics", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"acme" not in response.content and b"iris" not in response.content


def test_metrics_are_closed_in_production_when_no_token_is_set(served, client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 403
    assert b"set METRICS_TOKEN" in response.content and b"acme" not in response.content


def test_metrics_are_open_under_debug_when_no_token_is_set(served, client, settings):
    settings.METRICS_TOKEN = ""
    settings.DEBUG = True
    response = client.get("/metrics")
    assert response.status_code == 200 and 'org="acme"' in response.content.decode()
