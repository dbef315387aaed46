import pytest

from accounts.models import AuditEvent, Membership, Organization, User

pytestmark = pytest.mark.django_db

STRONG = "a-strong-enough-passphrase-42"


def register(api_client, **body):
    return api_client.post("/api/v1/auth/register", body, format="json")


def test_register_creates_user_and_owned_organization(api_client):
    response = register(api_client, email="Ada@Example.com", password=STRONG, name="Ada", organization="Analytical Engines")
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
    assert set(AuditEvent.objects.filter(organization=membership.organization).values_list("action", flat=True)) == {
        "organization.created",
        "member.added",
    }


@pytest.mark.parametrize(
    "body, field, fragment",
    [
        pytest.param({"password": STRONG}, "email", "required", id="missing-email"),
        pytest.param({"email": "x@example.com"}, "password", "required", id="missing-password"),
        pytest.param({"email": "not-an-email", "password": STRONG}, "email", "valid email", id="bad-email"),
        pytest.param({"email": "x@example.com", "password": STRONG, "plan": "gold"}, "plan", "Unknown field", id="unknown-field"),
        pytest.param({"email": "x@example.com", "password": "short"}, "password", "too short", id="short-password"),
        pytest.param({"email": "x@example.com", "password": "password123"}, "password", "too common", id="common-password"),
        pytest.param({"email": "x@example.com", "password": "8675309123456"}, "password", "entirely numeric", id="numeric-password"),
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


def test_register_rejects_duplicate_email_case_insensitively(api_client):
    assert register(api_client, email="ada@example.com", password=STRONG).status_code == 201
    response = register(api_client, email="ADA@example.com", password=STRONG)
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert response.json()["errors"] == [{"field": "email", "message": "already registered"}]
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


def test_token_pair_refresh_and_me(api_client):
    register(api_client, email="ada@example.com", password=STRONG, organization="Engines")
    tokens = api_client.post("/api/v1/auth/token", {"email": "ada@example.com", "password": STRONG}, format="json").json()
    assert set(tokens) == {"access", "refresh"}
    refreshed = api_client.post("/api/v1/auth/token/refresh", {"refresh": tokens["refresh"]}, format="json")
    assert refreshed.status_code == 200
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    me = api_client.get("/api/v1/me").json()
    assert me["user"]["email"] == "ada@example.com"
    assert me["organizations"] == [{"slug": "engines", "name": "Engines", "role": "owner"}]


def test_token_with_wrong_password_is_401_problem(api_client):
    register(api_client, email="ada@example.com", password=STRONG)
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
