"""Failed sign-ins are counted by account and by address, on the web and the API."""

import pytest
from django.test import Client

from accounts.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

LIMIT = 3


@pytest.fixture(autouse=True)
def small_limit(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT


@pytest.fixture
def ada():
    return UserFactory(email="ada@example.com")


def api_sign_in(api_client, email: str, password: str, address: str = "198.51.100.7"):
    return api_client.post("/api/v1/auth/token", {"email": email, "password": password}, format="json", REMOTE_ADDR=address)


def web_sign_in(email: str, password: str, address: str = "198.51.100.7"):
    return Client(REMOTE_ADDR=address).post("/login/", {"username": email, "password": password})


def test_the_api_refuses_an_account_past_the_limit_even_with_its_password(ada, api_client, settings):
    for attempt in range(LIMIT - 1):
        assert api_sign_in(api_client, "ada@example.com", "wrong-password", address=f"198.51.100.{attempt}").status_code == 401
    locked = api_sign_in(api_client, "ADA@example.com", "wrong-password", address="198.51.100.99")
    assert locked.status_code == 429
    assert locked["Content-Type"] == "application/problem+json" and locked.json()["code"] == "rate_limited"
    assert locked["Retry-After"] == str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    assert api_sign_in(api_client, "ada@example.com", PASSWORD, address="203.0.113.5").status_code == 429
    UserFactory(email="bob@example.com")
    assert api_sign_in(api_client, "bob@example.com", PASSWORD, address="203.0.113.5").status_code == 200


def test_the_api_refuses_an_address_past_the_limit_whatever_the_account(ada, api_client):
    for n in range(LIMIT - 1):
        assert api_sign_in(api_client, f"nobody{n}@example.com", "wrong-password").status_code == 401
    assert api_sign_in(api_client, "nobody@example.com", "wrong-password").status_code == 429
    assert api_sign_in(api_client, "ada@example.com", PASSWORD).status_code == 429
    assert api_sign_in(api_client, "ada@example.com", PASSWORD, address="203.0.113.5").status_code == 200


def test_an_unknown_account_is_locked_exactly_like_a_known_one(ada, api_client):
    answers = {}
    for email in ("ada@example.com", "ghost@example.com"):
        responses = [api_sign_in(api_client, email, "wrong-password", address=f"192.0.2.{n}") for n in range(LIMIT + 1)]
        answers[email] = [(r.status_code, r.json()["detail"]) for r in responses]
    assert answers["ada@example.com"] == answers["ghost@example.com"]


def test_the_login_page_refuses_an_account_past_the_limit_and_says_so(ada, settings):
    for n in range(LIMIT - 1):
        page = web_sign_in("ada@example.com", "wrong-password", address=f"198.51.100.{n}")
        assert page.status_code == 200 and b"correct email" in page.content
    locked = web_sign_in("ada@example.com", "wrong-password", address="198.51.100.99")
    assert locked.status_code == 429
    assert locked["Retry-After"] == str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    assert b"Too many failed sign-ins" in locked.content
    browser = Client(REMOTE_ADDR="203.0.113.5")
    assert browser.post("/login/", {"username": "ada@example.com", "password": PASSWORD}).status_code == 429
    assert "_auth_user_id" not in browser.session


def test_the_login_page_refuses_an_address_past_the_limit(ada):
    for n in range(LIMIT):
        web_sign_in(f"nobody{n}@example.com", "wrong-password")
    assert web_sign_in("ada@example.com", PASSWORD).status_code == 429
    assert web_sign_in("ada@example.com", PASSWORD, address="203.0.113.5").status_code == 302


def test_a_success_before_the_limit_starts_the_count_again(ada):
    for _ in range(LIMIT - 1):
        web_sign_in("ada@example.com", "wrong-password")
    assert web_sign_in("ada@example.com", PASSWORD).status_code == 302
    for _ in range(LIMIT - 1):
        assert web_sign_in("ada@example.com", "wrong-password").status_code == 200


@pytest.mark.parametrize(
    "hops, forwarded, counted",
    [
        pytest.param(0, "203.0.113.9", "10.0.0.2", id="no-proxy-ignores-the-header"),
        pytest.param(1, "203.0.113.9", "203.0.113.9", id="one-proxy"),
        pytest.param(1, "6.6.6.6, 203.0.113.9", "203.0.113.9", id="forged-entry-on-the-left"),
        pytest.param(2, "203.0.113.9", "10.0.0.2", id="fewer-entries-than-proxies"),
    ],
)
def test_attempts_are_counted_by_the_address_the_outermost_trusted_proxy_saw(settings, rf, hops, forwarded, counted):
    from accounts.authentication import sign_in_address

    settings.SIGN_IN_TRUSTED_PROXIES = hops
    assert sign_in_address(rf.post("/login/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded)) == counted
