import pytest

from accounts.models import AuditEvent, Membership, Role
from accounts.tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def member_client(tenant, role):
    """A client logged in (JWT) as a new user with `role` in tenant's organization."""
    from rest_framework.test import APIClient
    from rest_framework_simplejwt.tokens import RefreshToken

    user = UserFactory(email=f"{role}@{tenant.organization.slug}.example")
    membership = MembershipFactory(user=user, organization=tenant.organization, role=role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client, membership


def test_create_rename_and_list_organizations(tenant_a):
    client = tenant_a.jwt_client()
    created = client.post("/api/v1/orgs", {"name": "Research Lab"}, format="json")
    assert created.status_code == 201
    assert created.json()["slug"] == "research-lab"
    assert created.json()["role"] == "owner"
    renamed = client.patch("/api/v1/orgs/research-lab", {"name": "Research"}, format="json")
    assert renamed.json()["name"] == "Research"
    listed = client.get("/api/v1/orgs").json()
    assert [(o["slug"], o["role"]) for o in listed["results"]] == [("acme", "owner"), ("research-lab", "owner")]
    actions = list(AuditEvent.objects.filter(organization__slug="research-lab").values_list("action", flat=True))
    assert sorted(actions) == ["member.added", "organization.created", "organization.renamed"]


@pytest.mark.parametrize(
    "body, status, code",
    [
        pytest.param({}, 400, "invalid_input", id="missing-name"),
        pytest.param({"name": "X", "slug": "Bad Slug"}, 400, "invalid_input", id="bad-slug"),
        pytest.param({"name": "X", "slug": "admin"}, 400, "invalid_input", id="reserved-slug"),
        pytest.param({"name": "X", "slug": "acme"}, 409, "conflict", id="taken-slug"),
        pytest.param({"name": "X", "colour": "red"}, 400, "invalid_input", id="unknown-field"),
    ],
)
def test_create_organization_rejects_bad_input(tenant_a, body, status, code):
    response = tenant_a.jwt_client().post("/api/v1/orgs", body, format="json")
    assert response.status_code == status
    assert response.json()["code"] == code
    assert Membership.objects.filter(user=tenant_a.user).count() == 1


def test_viewer_cannot_rename_or_create_keys(tenant_a):
    client, _ = member_client(tenant_a, Role.VIEWER)
    assert client.patch("/api/v1/orgs/acme", {"name": "x"}, format="json").status_code == 403
    response = client.post("/api/v1/orgs/acme/api-keys", {"name": "k", "scopes": ["read"]}, format="json")
    assert response.status_code == 403
    assert "viewers cannot" in response.json()["detail"]
    assert client.get("/api/v1/orgs/acme/members").status_code == 200


def test_member_creates_keys_but_not_admin_keys(tenant_a):
    client, _ = member_client(tenant_a, Role.MEMBER)
    ok = client.post("/api/v1/orgs/acme/api-keys", {"name": "ci", "scopes": ["predict", "read"]}, format="json")
    assert ok.status_code == 201
    assert ok.json()["key"].startswith(f"mh_{ok.json()['prefix']}_")
    refused = client.post("/api/v1/orgs/acme/api-keys", {"name": "ci", "scopes": ["admin"]}, format="json")
    assert refused.status_code == 403


def test_admin_adds_members_but_only_owner_grants_owner(tenant_a):
    admin, _ = member_client(tenant_a, Role.ADMIN)
    newcomer = UserFactory(email="new@example.com")
    added = admin.post("/api/v1/orgs/acme/members", {"email": newcomer.email, "role": "member"}, format="json")
    assert added.status_code == 201
    member_id = added.json()["id"]
    assert admin.patch(f"/api/v1/orgs/acme/members/{member_id}", {"role": "owner"}, format="json").status_code == 403
    owner = tenant_a.jwt_client()
    assert owner.patch(f"/api/v1/orgs/acme/members/{member_id}", {"role": "owner"}, format="json").json()["role"] == "owner"
    # and now the admin cannot remove that owner
    assert admin.delete(f"/api/v1/orgs/acme/members/{member_id}").status_code == 403
    assert owner.delete(f"/api/v1/orgs/acme/members/{member_id}").status_code == 204


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"email": "new@example.com", "role": "emperor"}, "role", id="wrong-role"),
        pytest.param({"email": "nobody@example.com", "role": "member"}, "email", id="unknown-user"),
        pytest.param({"role": "member"}, "email", id="missing-email"),
    ],
)
def test_add_member_rejects_bad_input(tenant_a, body, field):
    UserFactory(email="new@example.com")
    response = tenant_a.jwt_client().post("/api/v1/orgs/acme/members", body, format="json")
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert Membership.objects.filter(organization=tenant_a.organization).count() == 1


def test_last_owner_cannot_leave_or_be_demoted(tenant_a):
    owner = tenant_a.jwt_client()
    own_id = Membership.objects.get(user=tenant_a.user).id
    left = owner.delete(f"/api/v1/orgs/acme/members/{own_id}")
    assert left.status_code == 409
    assert "last owner" in left.json()["detail"]
    demoted = owner.patch(f"/api/v1/orgs/acme/members/{own_id}", {"role": "admin"}, format="json")
    assert demoted.status_code == 409
    assert Membership.objects.get(id=own_id).role == "owner"


def test_member_can_leave(tenant_a):
    client, membership = member_client(tenant_a, Role.MEMBER)
    assert client.delete(f"/api/v1/orgs/acme/members/{membership.id}").status_code == 204
    assert AuditEvent.objects.filter(action="member.left", target_id=str(membership.id)).count() == 1


def test_membership_changes_are_audited_with_actor_and_ip(tenant_a):
    newcomer = UserFactory(email="new@example.com")
    owner = tenant_a.jwt_client()
    response = owner.post("/api/v1/orgs/acme/members", {"email": newcomer.email}, format="json", REMOTE_ADDR="203.0.113.9")
    events = owner.get("/api/v1/orgs/acme/audit-events?action=member.added").json()["results"]
    latest = events[0]
    assert latest["actor"] == tenant_a.user.email
    assert latest["ip_address"] == "203.0.113.9"
    assert latest["target_id"] == str(response.json()["id"])
    assert latest["data"] == {"email": "new@example.com", "role": "member"}


def test_member_cannot_read_audit_log(tenant_a):
    client, _ = member_client(tenant_a, Role.MEMBER)
    assert client.get("/api/v1/orgs/acme/audit-events").status_code == 403
