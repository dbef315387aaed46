"""Refresh tokens end: on refresh (rotation), on logout, on a password change (API and web)."""

import pytest
from django.test import Client

from accounts.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-new-long-secret-9"


@pytest.fixture
def ada():
    return UserFactory(email="ada@example.com")


def sign_in(api_client, password: str = PASSWORD) -> dict:
    response = api_client.post("/api/v1/auth/token", {"email": "ada@example.com", "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def refresh(api_client, token: str):
    return api_client.post("/api/v1/auth/token/refresh", {"refresh": token}, format="json")


def me_with(api_client, access: str):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    try:
        return api_client.get("/api/v1/me")
    finally:
        api_client.credentials()


def test_a_refresh_token_works_once_and_its_successor_works(ada, api_client):
    tokens = sign_in(api_client)
    first = refresh(api_client, tokens["refresh"])
    assert first.status_code == 200 and set(first.json()) == {"access", "refresh"}
    again = refresh(api_client, tokens["refresh"])
    assert again.status_code == 401 and again.json()["code"] == "not_authenticated"
    assert refresh(api_client, first.json()["refresh"]).status_code == 200


def test_logout_blacklists_the_refresh_token_only(ada, api_client):
    laptop, phone = sign_in(api_client), sign_in(api_client)
    response = api_client.post("/api/v1/auth/logout", {"refresh": laptop["refresh"]}, format="json")
    assert response.status_code == 204
    refused = refresh(api_client, laptop["refresh"])
    assert refused.status_code == 401 and "blacklisted" in refused.json()["detail"]
    assert refresh(api_client, phone["refresh"]).status_code == 200


def test_logout_everywhere_blacklists_every_refresh_token_of_the_user(ada, api_client):
    laptop, phone = sign_in(api_client), sign_in(api_client)
    other = UserFactory(email="bob@example.com")
    bobs = api_client.post("/api/v1/auth/token", {"email": other.email, "password": PASSWORD}, format="json").json()
    assert api_client.post("/api/v1/auth/logout", {"refresh": laptop["refresh"], "all": True}, format="json").status_code == 204
    assert refresh(api_client, phone["refresh"]).status_code == 401
    assert refresh(api_client, bobs["refresh"]).status_code == 200


@pytest.mark.parametrize(
    "body, status, code",
    [
        pytest.param({"refresh": "not.a.token"}, 401, "not_authenticated", id="garbage"),
        pytest.param({}, 400, "invalid_input", id="missing"),
    ],
)
def test_logout_with_a_bad_token_says_so(api_client, body, status, code):
    response = api_client.post("/api/v1/auth/logout", body, format="json")
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json" and response.json()["code"] == code


def test_logout_twice_is_401(ada, api_client):
    tokens = sign_in(api_client)
    assert api_client.post("/api/v1/auth/logout", {"refresh": tokens["refresh"]}, format="json").status_code == 204
    assert api_client.post("/api/v1/auth/logout", {"refresh": tokens["refresh"]}, format="json").status_code == 401


def test_password_change_through_the_api_ends_every_token(ada, api_client):
    laptop, phone = sign_in(api_client), sign_in(api_client)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {laptop['access']}")
    wrong = api_client.post("/api/v1/me/password", {"old_password": "nope", "new_password": NEW_PASSWORD}, format="json")
    assert wrong.status_code == 400 and wrong.json()["errors"] == [{"field": "old_password", "message": "not correct"}]
    weak = api_client.post("/api/v1/me/password", {"old_password": PASSWORD, "new_password": "short"}, format="json")
    assert weak.status_code == 400 and weak.json()["errors"][0]["field"] == "new_password"
    assert refresh(api_client, phone["refresh"]).status_code == 200  # nothing changed yet
    phone = sign_in(api_client)
    changed = api_client.post("/api/v1/me/password", {"old_password": PASSWORD, "new_password": NEW_PASSWORD}, format="json")
    assert changed.status_code == 204
    api_client.credentials()
    assert refresh(api_client, laptop["refresh"]).status_code == 401
    assert refresh(api_client, phone["refresh"]).status_code == 401
    assert me_with(api_client, phone["access"]).status_code == 401  # access tokens end too
    fresh = sign_in(api_client, NEW_PASSWORD)
    assert me_with(api_client, fresh["access"]).status_code == 200
    assert refresh(api_client, fresh["refresh"]).status_code == 200


def test_api_keys_have_no_password_to_change(tenant_a):
    response = tenant_a.key_client().post(
        "/api/v1/me/password", {"old_password": "x", "new_password": NEW_PASSWORD}, format="json"
    )
    assert response.status_code == 403


def test_password_change_on_the_web_ends_every_refresh_token(ada, api_client):
    tokens = sign_in(api_client)
    browser = Client()
    browser.force_login(ada)
    response = browser.post(
        "/password/", {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert response.status_code == 302
    assert refresh(api_client, tokens["refresh"]).status_code == 401
    assert me_with(api_client, tokens["access"]).status_code == 401
