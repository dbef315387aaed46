import pytest
from django.db import OperationalError

pytestmark = pytest.mark.django_db


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_each_backing_service(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "cache", "broker", "storage", "runners"}
    assert body["checks"]["database"]["backend"] == "postgresql"
    assert body["checks"]["cache"]["backend"] == "redis"
    assert all(check["ok"] for check in body["checks"].values())


@pytest.mark.parametrize(
    ("tracking_uri", "features_off"), [("", ["mlflow_import"]), ("http://127.0.0.1:5000", [])], ids=["unset", "set"]
)
def test_readyz_lists_the_features_that_are_off_and_how_to_turn_them_on(client, settings, tracking_uri, features_off):
    settings.MLFLOW_TRACKING_URI = tracking_uri
    body = client.get("/readyz").json()
    assert body["status"] == "ok"
    assert body["features_off"] == features_off
    assert body["features"]["mlflow_import"] == {"enabled": bool(tracking_uri), "setting": "MLFLOW_TRACKING_URI"}


def test_readyz_is_503_with_clear_body_when_database_is_down(client, monkeypatch):
    from platform_site import health

    def down():
        raise OperationalError("connection refused")

    monkeypatch.setattr(health, "_check_database", down)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["checks"]["database"]["ok"] is False
    assert "connection refused" in response.json()["checks"]["database"]["error"]


def test_readyz_degrades_when_redis_is_down(client, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["cache"]["ok"] is False
    assert response.json()["checks"]["database"]["ok"] is True


def test_readyz_degrades_when_no_runner_host_answers(client, settings, tmp_path):
    settings.RUNNER_ADDRESSES = [f"unix:{tmp_path / 'nobody-listens.sock'}"]
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["runners"]["ok"] is False
    assert "FileNotFoundError" in response.json()["checks"]["runners"]["error"]


def test_api_answers_503_problem_when_database_is_down(tenant_a, monkeypatch):
    from accounts import selectors

    def down(**kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(selectors, "memberships_of_user", down)
    response = tenant_a.jwt_client().get("/api/v1/orgs")
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "service_unavailable"
    assert response.json()["detail"] == "The database is unavailable; try again shortly."


def test_openapi_schema_and_docs(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/auth/register" in paths
    assert "/api/v1/orgs/{org}/api-keys" in paths
    assert "/api/v1/models/{org}/{model}/predict" in paths
    assert "/v2/models/{model}/infer" in paths
    assert set(schema.json()["components"]["securitySchemes"]) == {"ApiKey", "jwtAuth", "cookieAuth"}
    assert client.get("/api/docs/").status_code == 200


def test_web_login_home_and_logout(client, tenant_a):
    assert client.get("/").status_code == 302
    page = client.post("/login/", {"username": tenant_a.user.email, "password": tenant_a.password})
    assert page.status_code == 302
    home = client.get("/")
    assert home.status_code == 200
    assert b"Acme" in home.content and b"Owner" in home.content
    client.post("/logout/")
    assert client.get("/").status_code == 302


def test_web_signup_shows_field_errors(client):
    page = client.post("/signup/", {"email": "x@example.com", "password": "short"})
    assert page.status_code == 200
    assert b"This password is too short" in page.content


def test_admin_lists_keys_and_audit_events(client, tenant_a, django_user_model):
    admin = django_user_model.objects.create_superuser(email="ops@example.com", password="ops-password-123")
    client.force_login(admin)
    for path in [
        "/admin/accounts/apikey/",
        "/admin/accounts/auditevent/?action=api_key.created",
        "/admin/accounts/organization/?q=acme",
        "/admin/accounts/user/?q=owner",
    ]:
        response = client.get(path)
        assert response.status_code == 200, path
    assert tenant_a.api_key.split("_")[1].encode() in client.get("/admin/accounts/apikey/").content
