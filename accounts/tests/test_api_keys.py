from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import authentication
from accounts.keys import hash_key
from accounts.models import ApiKey, AuditEvent

pytestmark = pytest.mark.django_db


def create_key(client, **body):
    body.setdefault("name", "deploy")
    body.setdefault("scopes", ["read"])
    return client.post("/api/v1/orgs/acme/api-keys", body, format="json")


def test_key_is_shown_once_and_only_its_hash_is_stored(tenant_a):
    client = tenant_a.jwt_client()
    created = create_key(client).json()
    plaintext = created["key"]
    stored = ApiKey.objects.get(id=created["id"])
    assert stored.hashed_key == hash_key(plaintext)
    assert plaintext not in str(ApiKey.objects.filter(id=created["id"]).values().first())
    listed = client.get("/api/v1/orgs/acme/api-keys").json()["results"]
    assert all("key" not in item for item in listed)
    assert client.get(f"/api/v1/orgs/acme/api-keys/{created['id']}").json().get("key") is None


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_key_authenticates_with_either_header(tenant_a, api_client, header):
    if header == "authorization":
        api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant_a.api_key}")
    else:
        api_client.credentials(HTTP_X_API_KEY=tenant_a.api_key)
    body = api_client.get("/api/v1/me").json()
    assert body["organizations"] == [{"slug": "acme", "role": None}]
    assert body["api_key"]["scopes"] == ["admin", "predict", "read", "write"]


@pytest.mark.parametrize(
    "key, message",
    [
        pytest.param("mh_short", "malformed", id="malformed"),
        pytest.param("mh_abcdef12_" + "A" * 40, "not valid", id="unknown"),
    ],
)
def test_bad_keys_are_refused_with_a_reason(api_client, key, message, db):
    api_client.credentials(HTTP_X_API_KEY=key)
    response = api_client.get("/api/v1/me")
    assert response.status_code == 401
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"scopes": []}, "scopes", id="no-scopes"),
        pytest.param({"scopes": ["root"]}, "scopes", id="unknown-scope"),
        pytest.param({"name": ""}, "name", id="blank-name"),
        pytest.param({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at", id="expiry-in-past"),
        pytest.param({"expires_at": "soon"}, "expires_at", id="expiry-not-a-date"),
        pytest.param({"scope": ["read"]}, "scope", id="unknown-field"),
    ],
)
def test_create_key_rejects_bad_input(tenant_a, body, field):
    before = ApiKey.objects.count()
    response = create_key(tenant_a.jwt_client(), **body)
    assert response.status_code == 400
    assert field in [e["field"] for e in response.json()["errors"]]
    assert ApiKey.objects.count() == before


def test_expired_key_stops_working_at_its_expiry(tenant_a, api_client):
    created = create_key(tenant_a.jwt_client(), expires_at=(timezone.now() + timedelta(hours=1)).isoformat()).json()
    api_client.credentials(HTTP_X_API_KEY=created["key"])
    assert api_client.get("/api/v1/me").status_code == 200
    ApiKey.objects.filter(id=created["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    authentication.forget_cached_keys()  # the cached snapshot carries the old expiry
    response = api_client.get("/api/v1/me")
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_revoked_key_stops_in_this_process_at_once(tenant_a, api_client):
    api_client.credentials(HTTP_X_API_KEY=tenant_a.api_key)
    assert api_client.get("/api/v1/me").status_code == 200
    revoked = tenant_a.jwt_client().delete(f"/api/v1/orgs/acme/api-keys/{tenant_a.api_key_id}")
    assert revoked.status_code == 204
    response = api_client.get("/api/v1/me")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert AuditEvent.objects.filter(action="api_key.revoked", target_id=str(tenant_a.api_key_id)).count() == 1


def test_key_revoked_elsewhere_stops_within_the_cache_bound(tenant_a, settings):
    """Another process revoking the key only touches the database; this process's cached
    snapshot is honoured until API_KEY_CACHE_SECONDS pass, then the key is refused."""
    settings.API_KEY_CACHE_SECONDS = 10.0
    start = 1_000.0
    assert authentication.authenticate_api_key(tenant_a.api_key, now=start).id == tenant_a.api_key_id
    ApiKey.objects.filter(id=tenant_a.api_key_id).update(revoked_at=timezone.now())  # "another process"
    assert authentication.authenticate_api_key(tenant_a.api_key, now=start + 9.9).id == tenant_a.api_key_id
    with pytest.raises(authentication.ApiKeyError, match="revoked"):
        authentication.authenticate_api_key(tenant_a.api_key, now=start + 10.0)


def test_warm_key_lookup_makes_no_query(tenant_a, django_assert_num_queries):
    authentication.authenticate_api_key(tenant_a.api_key, now=5.0)
    with django_assert_num_queries(0):
        for i in range(20):
            authentication.authenticate_api_key(tenant_a.api_key, now=5.0 + i * 0.1)


def test_last_used_is_written_once_per_window(tenant_a, settings, django_assert_num_queries):
    settings.API_KEY_LAST_USED_WRITE_SECONDS = 60
    with django_assert_num_queries(2):  # the lookup, then one UPDATE of last_used_at
        authentication.authenticate_api_key(tenant_a.api_key, now=100.0)
    first = ApiKey.objects.get(id=tenant_a.api_key_id).last_used_at
    assert first is not None
    with django_assert_num_queries(0):  # cached key, write window not over
        authentication.authenticate_api_key(tenant_a.api_key, now=105.0)
    with django_assert_num_queries(1):  # cache expired: the lookup, but no write yet
        authentication.authenticate_api_key(tenant_a.api_key, now=130.0)
    with django_assert_num_queries(2):  # cache expired (10 s) and the write window passed
        authentication.authenticate_api_key(tenant_a.api_key, now=161.0)


def test_revoking_twice_is_a_conflict(tenant_a):
    client = tenant_a.jwt_client()
    assert client.delete(f"/api/v1/orgs/acme/api-keys/{tenant_a.api_key_id}").status_code == 204
    response = client.delete(f"/api/v1/orgs/acme/api-keys/{tenant_a.api_key_id}")
    assert response.status_code == 409


def test_key_without_scope_is_forbidden_not_hidden(tenant_a, api_client):
    created = create_key(tenant_a.jwt_client(), scopes=["predict"]).json()
    api_client.credentials(HTTP_X_API_KEY=created["key"])
    response = api_client.get("/api/v1/orgs/acme/members")
    assert response.status_code == 403
    assert "'read' scope" in response.json()["detail"]


def test_predict_only_key_cannot_list_the_models_it_cannot_read(tenant_a, api_client):
    from accounts.principals import Caller
    from registry import services as registry_services

    registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    predict_only = create_key(tenant_a.jwt_client(), scopes=["predict"]).json()["key"]
    read = create_key(tenant_a.jwt_client(), scopes=["read"]).json()["key"]
    api_client.credentials(HTTP_X_API_KEY=predict_only)
    detail = api_client.get("/api/v1/models/acme/iris")
    listing = api_client.get("/api/v1/models")
    assert (detail.status_code, listing.status_code) == (403, 403)
    assert listing.json()["code"] == detail.json()["code"] == "permission_denied"
    assert "'read' scope" in listing.json()["detail"]
    api_client.credentials(HTTP_X_API_KEY=read)
    assert [m["name"] for m in api_client.get("/api/v1/models").json()["results"]] == ["iris"]
