import re
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import AuditEvent, Membership, Organization, PendingRegistration, User

pytestmark = pytest.mark.django_db

STRONG = "a-strong-enough-passphrase-42"


def register(api_client, **body):
    return api_client.post("/api/v1/auth/register", body, format="json")


def emailed_token(message) -> str:
    return re.search(r"/signup/confirm/([A-Za-z0-9_-]+)/", message.body).group(1)


def sign_up(api_client, mailoutbox, **body):
    """Register and confirm through the emailed link, as a person does."""
    assert register(api_client, **body).status_code == 202
    return api_client.post("/api/v1/auth/register/confirm", {"token": emailed_token(mailoutbox[-1])}, format="json")


def test_register_emails_a_link_that_creates_user_and_owned_organization(api_client, mailoutbox):
    response = register(api_client, email="Ada@Example.com", password=STRONG, name="Ada", organization="Analytical Engines")
    assert response.status_code == 202
    assert response.json() == {
        "email": "ada@example.com",
        "detail": "Check your inbox: we sent a message to ada@example.com. Open its link to finish signing up.",
    }
    assert User.objects.count() == 0 and Organization.objects.count() == 0  # nothing until the inbox answers
    (message,) = mailoutbox
    assert (message.to, message.subject) == (["ada@example.com"], "Confirm your Modelhost account")
    assert "http://testserver/signup/confirm/" in message.body

    response = api_client.post("/api/v1/auth/register/confirm", {"token": emailed_token(message)}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["user"]["email"] == "ada@example.com"
    assert body["organization"] == {
        "slug": "analytical-engines",
        "name": "Analytical Engines",
        "created_at": body["organization"]["created_at"],
        "role": "owner",
    }
    membership = Membership.objects.get(user__email="ada@example.com")
    assert membership.role == "owner"
    assert User.objects.get().check_password(STRONG)
    assert set(AuditEvent.objects.filter(organization=membership.organization).values_list("action", flat=True)) == {
        "organization.created",
        "member.added",
    }
    assert not PendingRegistration.objects.exists()
    again = api_client.post("/api/v1/auth/register/confirm", {"token": emailed_token(message)}, format="json")
    assert again.status_code == 400 and again.json()["errors"] == [{"field": "token", "message": "not valid or expired"}]


def test_a_taken_email_gets_the_same_answer_as_a_new_one(api_client, tenant_a, mailoutbox):
    new = register(api_client, email="new@example.com", password=STRONG)
    taken = register(api_client, email="OWNER@acme.example", password=STRONG)

    assert (new.status_code, taken.status_code) == (202, 202)
    assert (new["Content-Type"], set(new.json())) == (taken["Content-Type"], set(taken.json()))
    assert new.json()["detail"].replace("new@example.com", "X") == taken.json()["detail"].replace("owner@acme.example", "X")
    assert taken.json()["email"] == "owner@acme.example"
    assert User.objects.filter(email="owner@acme.example").count() == 1
    assert not PendingRegistration.objects.filter(email="owner@acme.example").exists()
    # Only the inbox learns which: the owner is told they already have an account.
    assert [(m.to, m.subject) for m in mailoutbox] == [
        (["new@example.com"], "Confirm your Modelhost account"),
        (["owner@acme.example"], "You already have a Modelhost account"),
    ]
    assert "http://testserver/login/" in mailoutbox[1].body and "/signup/confirm/" not in mailoutbox[1].body


def test_one_address_gets_one_message_a_minute_and_the_same_answer(api_client, mailoutbox):
    first = register(api_client, email="ada@example.com", password=STRONG)
    second = register(api_client, email="ada@example.com", password=STRONG)
    assert first.json() == second.json() and second.status_code == 202
    assert len(mailoutbox) == 1


def test_an_expired_link_makes_no_account(api_client, mailoutbox, settings):
    register(api_client, email="ada@example.com", password=STRONG)
    PendingRegistration.objects.update(
        created_at=timezone.now() - timedelta(hours=settings.REGISTRATION_CONFIRM_HOURS, seconds=1)
    )
    response = api_client.post("/api/v1/auth/register/confirm", {"token": emailed_token(mailoutbox[0])}, format="json")
    assert response.status_code == 400 and "expired" in response.json()["detail"]
    assert User.objects.count() == 0


def test_the_second_of_two_links_to_one_address_is_refused(api_client, mailoutbox, settings):
    settings.REGISTRATION_EMAIL_INTERVAL_SECONDS = 0
    register(api_client, email="ada@example.com", password=STRONG)
    register(api_client, email="ada@example.com", password=STRONG + "-2")
    first, second = (emailed_token(m) for m in mailoutbox)
    assert api_client.post("/api/v1/auth/register/confirm", {"token": second}, format="json").status_code == 201
    assert api_client.post("/api/v1/auth/register/confirm", {"token": first}, format="json").status_code == 400
    assert User.objects.get().check_password(STRONG + "-2")


@pytest.mark.parametrize(
    "body, field, fragment",
    [
        pytest.param({"password": STRONG}, "email", "required", id="missing-email"),
        pytest.param({"email": "x@example.com"}, "password", "required", id="missing-password"),
        pytest.param({"email": "not-an-email", "password": STRONG}, "email", "valid email", id="bad-email"),
        pytest.param({"email": "x@example.com", "password": STRONG, "plan": "gold"}, "plan", "Unknown field", id="unknown-field"),
        pytest.param({"email": "x@example.com", "password": "short"}, "password", "too short", id="short-password"),
        pytest.param({"email": "x@example.com", "password": "password123"}, "password", "too common", id="common-password"),
        pytest.param(
            {"email": "x@example.com", "password": "8675309123456"}, "password", "entirely numeric", id="numeric-password"
        ),
    ],
)
def test_register_rejects_bad_input_naming_the_field_and_writes_nothing(api_client, body, field, fragment):
    response = register(api_client, **body)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 400
    assert problem["code"] == "invalid_input"
    assert any(item["field"] == field and fragment in item["message"] for item in problem["errors"]), problem
    assert User.objects.count() == 0
    assert Organization.objects.count() == 0
    assert not PendingRegistration.objects.exists()


def test_a_taken_email_in_other_case_is_told_by_email_and_makes_nothing(api_client, mailoutbox, settings):
    settings.REGISTRATION_EMAIL_INTERVAL_SECONDS = 0
    assert sign_up(api_client, mailoutbox, email="ada@example.com", password=STRONG).status_code == 201
    response = register(api_client, email="ADA@example.com", password=STRONG)
    assert response.status_code == 202
    assert mailoutbox[-1].subject == "You already have a Modelhost account"
    assert User.objects.count() == 1
    assert Organization.objects.count() == 1


def test_malformed_json_is_a_problem_naming_the_position(api_client):
    response = api_client.post("/api/v1/auth/register", data=b'{"email": "x@example.com", ', content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "malformed_body"
    assert "not valid JSON" in response.json()["detail"]


def test_json_array_body_is_rejected(api_client):
    response = api_client.post("/api/v1/auth/register", data=b"[1, 2]", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_input"


def test_token_pair_refresh_and_me(api_client, mailoutbox):
    sign_up(api_client, mailoutbox, email="ada@example.com", password=STRONG, organization="Engines")
    tokens = api_client.post("/api/v1/auth/token", {"email": "ada@example.com", "password": STRONG}, format="json").json()
    assert set(tokens) == {"access", "refresh"}
    refreshed = api_client.post("/api/v1/auth/token/refresh", {"refresh": tokens["refresh"]}, format="json")
    assert refreshed.status_code == 200
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    me = api_client.get("/api/v1/me").json()
    assert me["user"]["email"] == "ada@example.com"
    assert me["organizations"] == [{"slug": "engines", "name": "Engines", "role": "owner"}]


def test_token_with_wrong_password_is_401_problem(api_client, mailoutbox):
    sign_up(api_client, mailoutbox, email="ada@example.com", password=STRONG)
    response = api_client.post("/api/v1/auth/token", {"email": "ada@example.com", "password": "wrong-password-x"}, format="json")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "not_authenticated"


def test_me_without_credentials_is_401(api_client):
    response = api_client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_garbage_jwt_is_401(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Bearer not.a.jwt")
    response = api_client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_unknown_api_path_is_problem_404(api_client):
    response = api_client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"
