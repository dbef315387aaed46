"""Every web page through Django's test client: status, key content, errors next to fields,
confirmation before destructive actions, roles, and tenant isolation (404 like missing)."""

from __future__ import annotations

import html
import re
from datetime import date, timedelta

import orjson
import pytest
from django.test import Client

from accounts.models import ApiKey, Membership, Role, User
from accounts.tests.factories import PASSWORD
from registry.models import ModelVersion, Release, Stage
from registry.tests.factories import IRIS_ROW, iris_model, joblib_bytes, upload_file
from web_tests.conftest import member_of, signed_in

pytestmark = pytest.mark.django_db

CSRF_VALUE = re.compile(rb'(name="csrfmiddlewaretoken" value=|"X-CSRFToken": )"[^"]*"')


def error_next_to(response, field: str) -> str:
    """The text of the error paragraph rendered beside `field`."""
    match = re.search(rf'<p class="error" id="error-{field}">([^<]*)</p>', response.content.decode())
    assert match, f"no error shown next to {field}"
    return match.group(1)


def without_csrf(content: bytes) -> bytes:
    return CSRF_VALUE.sub(b"", content)


# ---------------------------------------------------------------------------- accounts


def test_signup_emails_a_link_that_creates_account_and_organization_then_opens_it(client, mailoutbox):
    assert client.get("/signup/").status_code == 200
    response = client.post(
        "/signup/", {"email": "Ada@Example.com", "name": "Ada", "organization": "Analytical Engines", "password": PASSWORD}
    )
    assert response.status_code == 200
    assert b"Check your inbox: we sent a message to ada@example.com." in response.content
    assert not User.objects.exists() and not client.session.get("_auth_user_id")
    link = re.search(r"http://testserver(/signup/confirm/[A-Za-z0-9_-]+/)", mailoutbox[0].body).group(1)
    assert b"Confirm and open Modelhost" in client.get(link).content
    assert not User.objects.exists()  # a mail scanner's GET makes nothing

    response = client.post(link)

    assert response.status_code == 302
    assert response["Location"] == "/orgs/analytical-engines/"
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert b"Models of Analytical Engines" in page.content
    assert User.objects.get(email="ada@example.com").memberships.get().role == Role.OWNER
    used = client.post(link)
    assert used.status_code == 400 and b"not valid or has expired" in used.content


def test_signup_with_a_taken_email_answers_as_a_new_one_does(client, tenant_a, mailoutbox):
    taken = client.post("/signup/", {"email": "owner@acme.example", "password": PASSWORD})
    new = client.post("/signup/", {"email": "other@acme.example", "password": PASSWORD})
    assert taken.status_code == new.status_code == 200
    assert without_csrf(taken.content).replace(b"owner@acme.example", b"X") == without_csrf(new.content).replace(
        b"other@acme.example", b"X"
    )
    assert [m.subject for m in mailoutbox] == ["You already have a Modelhost account", "Confirm your Modelhost account"]
    assert not client.session.get("_auth_user_id")


@pytest.mark.parametrize(
    "data, field, message",
    [
        pytest.param({"email": "a@example.com", "password": "short"}, "password", "too short", id="short-password"),
        pytest.param({"email": "not-an-email", "password": PASSWORD}, "email", "valid email", id="bad-email"),
    ],
)
def test_signup_shows_errors_next_to_fields(client, tenant_a, data, field, message):
    response = client.post("/signup/", data)
    assert response.status_code == 200
    assert message in error_next_to(response, field)
    assert not client.session.get("_auth_user_id")


def test_login_and_logout(client, tenant_a):
    assert client.get("/login/").status_code == 200
    wrong = client.post("/login/", {"username": "owner@acme.example", "password": "wrong-password"})
    assert wrong.status_code == 200 and b"correct email" in wrong.content
    response = client.post("/login/", {"username": "owner@acme.example", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    home = client.get("/")
    assert b'href="/orgs/acme/"' in home.content
    assert b'<option value="acme"' in home.content  # the organization switcher
    assert client.post("/logout/").status_code == 302
    assert client.get("/")["Location"].startswith("/login/")


def test_password_change(owner_client, tenant_a):
    assert owner_client.get("/password/").status_code == 200
    wrong = owner_client.post(
        "/password/", {"old_password": "nope", "new_password1": "a-new-long-secret-9", "new_password2": "a-new-long-secret-9"}
    )
    assert "incorrectly" in error_next_to(wrong, "old_password")
    response = owner_client.post(
        "/password/", {"old_password": PASSWORD, "new_password1": "a-new-long-secret-9", "new_password2": "a-new-long-secret-9"}
    )
    assert response.status_code == 302
    tenant_a.user.refresh_from_db()
    assert tenant_a.user.check_password("a-new-long-secret-9")


def test_organization_switcher_and_create(owner_client, tenant_b):
    assert owner_client.get("/orgs/?org=acme")["Location"] == "/orgs/acme/"
    assert owner_client.get("/orgs/?org=globex").status_code == 404
    bad = owner_client.post("/orgs/new/", {"name": "Lab", "slug": "admin"})
    assert bad.status_code == 400 and "reserved" in error_next_to(bad, "slug")
    created = owner_client.post("/orgs/new/", {"name": "Research Lab", "slug": ""})
    assert created["Location"] == "/orgs/research-lab/"


def test_settings_renames_for_admins_only(owner_client, viewer_client, tenant_a):
    assert owner_client.post("/orgs/acme/settings/", {"name": "Acme Corp"}).status_code == 302
    tenant_a.organization.refresh_from_db()
    assert tenant_a.organization.name == "Acme Corp"
    assert viewer_client.get("/orgs/acme/settings/").status_code == 403


# ---------------------------------------------------------------------------- members


def test_members_add_change_and_remove_with_confirmation(owner_client, tenant_a):
    newcomer = User.objects.create_user(email="new@example.com", password=PASSWORD)
    page = owner_client.get("/orgs/acme/members/")
    assert page.status_code == 200 and b"Add a member" in page.content
    unknown = owner_client.post("/orgs/acme/members/", {"email": "nobody@example.com", "role": "member"})
    assert unknown.status_code == 400 and error_next_to(unknown, "email") == "no account with this email"
    assert owner_client.post("/orgs/acme/members/", {"email": "new@example.com", "role": "member"}).status_code == 302
    membership = Membership.objects.get(user=newcomer)

    asked = owner_client.post(f"/orgs/acme/members/{membership.id}/role/", {"role": "admin"})
    assert asked.status_code == 200 and b'name="confirmed" value="yes"' in asked.content
    membership.refresh_from_db()
    assert membership.role == Role.MEMBER  # nothing changes before the confirmation
    owner_client.post(f"/orgs/acme/members/{membership.id}/role/", {"role": "admin", "confirmed": "yes"})
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN

    asked = owner_client.post(f"/orgs/acme/members/{membership.id}/remove/")
    assert b"Remove new@example.com" in asked.content and Membership.objects.filter(id=membership.id).exists()
    owner_client.post(f"/orgs/acme/members/{membership.id}/remove/", {"confirmed": "yes"})
    assert not Membership.objects.filter(id=membership.id).exists()


def test_viewer_sees_members_but_cannot_manage_them(viewer_client, tenant_a):
    page = viewer_client.get("/orgs/acme/members/")
    assert page.status_code == 200 and b"owner@acme.example" in page.content and b"Add a member" not in page.content
    assert viewer_client.post("/orgs/acme/members/", {"email": "owner@globex.example", "role": "admin"}).status_code == 403
    owner = Membership.objects.get(user=tenant_a.user)
    assert viewer_client.post(f"/orgs/acme/members/{owner.id}/role/", {"role": "viewer", "confirmed": "yes"}).status_code == 403


def test_last_owner_cannot_be_demoted(owner_client, tenant_a):
    owner = Membership.objects.get(user=tenant_a.user)
    response = owner_client.post(f"/orgs/acme/members/{owner.id}/role/", {"role": "viewer", "confirmed": "yes"}, follow=True)
    assert b"last owner cannot be demoted" in response.content
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


# ---------------------------------------------------------------------------- API keys


def test_api_key_secret_is_shown_once_and_works(owner_client, tenant_a, api_client):
    expires = (date.today() + timedelta(days=30)).isoformat()
    response = owner_client.post("/orgs/acme/api-keys/", {"name": "ci", "scopes": ["predict", "read"], "expires_on": expires})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    secret = re.search(rb'id="new-key" class="mono" type="text" readonly value="(mh_[^"]+)"', response.content).group(1).decode()
    key = ApiKey.objects.get(name="ci")
    assert key.scopes == ["predict", "read"] and key.expires_at.date().isoformat() == expires
    assert secret.encode() not in owner_client.get("/orgs/acme/api-keys/").content
    api_client.credentials(HTTP_X_API_KEY=secret)
    assert api_client.get("/api/v1/models").status_code == 200


@pytest.mark.parametrize(
    "data, field, message",
    [
        pytest.param({"name": "k", "scopes": []}, "scopes", "required", id="no-scope"),
        pytest.param(
            {"name": "k", "scopes": ["predict"], "expires_on": "2001-01-01"},
            "expires_on",
            "must be in the future",
            id="past-expiry",
        ),
        pytest.param({"name": "", "scopes": ["predict"]}, "name", "required", id="no-name"),
    ],
)
def test_api_key_form_shows_errors_next_to_fields(owner_client, tenant_a, data, field, message):
    response = owner_client.post("/orgs/acme/api-keys/", data)
    assert response.status_code == 400
    assert message in error_next_to(response, field)
    assert not ApiKey.objects.filter(name="k").exists()


def test_member_cannot_create_admin_scope_key(member_client, tenant_a):
    response = member_client.post("/orgs/acme/api-keys/", {"name": "k", "scopes": ["admin"]})
    assert response.status_code == 400 and b"Only admins and owners" in response.content


def test_revoke_asks_first(owner_client, tenant_a):
    key_id = tenant_a.api_key_id
    asked = owner_client.post(f"/orgs/acme/api-keys/{key_id}/revoke/")
    assert asked.status_code == 200 and b"Revoke API key" in asked.content
    assert ApiKey.objects.get(id=key_id).revoked_at is None
    assert owner_client.post(f"/orgs/acme/api-keys/{key_id}/revoke/", {"confirmed": "yes"}).status_code == 302
    assert ApiKey.objects.get(id=key_id).revoked_at is not None
    assert b"revoked" in owner_client.get("/orgs/acme/api-keys/").content


def test_viewer_cannot_create_or_revoke_keys(viewer_client, tenant_a):
    page = viewer_client.get("/orgs/acme/api-keys/")
    assert page.status_code == 200 and b"Create a key" not in page.content and b"Revoke" not in page.content
    assert viewer_client.post("/orgs/acme/api-keys/", {"name": "k", "scopes": ["read"]}).status_code == 403
    assert viewer_client.post(f"/orgs/acme/api-keys/{tenant_a.api_key_id}/revoke/", {"confirmed": "yes"}).status_code == 403


def test_audit_log_for_admins(owner_client, member_client, tenant_a):
    page = owner_client.get("/orgs/acme/audit/")
    assert page.status_code == 200 and b"api_key.created" in page.content
    assert member_client.get("/orgs/acme/audit/").status_code == 403


# ---------------------------------------------------------------------------- models


def test_model_list_search_and_htmx_partial(owner_client, iris, tenant_a):
    from accounts.principals import Caller
    from registry import services

    services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="churn")
    page = owner_client.get("/orgs/acme/")
    assert b"/models/acme/iris/" in page.content and b"/models/acme/churn/" in page.content
    found = owner_client.get("/orgs/acme/?q=chu")
    assert b"/models/acme/churn/" in found.content and b"/models/acme/iris/" not in found.content
    partial = owner_client.get("/orgs/acme/?q=ir", HTTP_HX_REQUEST="true")
    assert partial.content.lstrip().startswith(b'<div id="model-results"')
    assert b"/models/acme/iris/" in partial.content and b"<html" not in partial.content
    assert "HX-Request" in partial["Vary"]
    restored = owner_client.get("/orgs/acme/?q=ir", HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true")
    assert b"<html" in restored.content


def test_create_model_and_errors_next_to_name(owner_client, viewer_client, tenant_a):
    bad = owner_client.post("/orgs/acme/models/new/", {"name": "Bad Name"})
    assert bad.status_code == 400 and error_next_to(bad, "name")
    created = owner_client.post("/orgs/acme/models/new/", {"name": "fraud", "description": "card fraud"})
    assert created["Location"] == "/models/acme/fraud/"
    taken = owner_client.post("/orgs/acme/models/new/", {"name": "fraud"})
    assert error_next_to(taken, "name") == "already exists"
    assert viewer_client.post("/orgs/acme/models/new/", {"name": "mine"}).status_code == 403


def test_model_page_shows_versions_signature_and_mismatch_warning(owner_client, iris):
    ModelVersion.objects.filter(registered_model=iris, number=1).update(sklearn_version="1.0.2", metrics={"accuracy": 0.97})
    page = owner_client.get("/models/acme/iris/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="version-1"' in html and 'id="version-2"' in html
    assert "LogisticRegression" in html and "joblib" in html
    assert "served by" in html and "1.0.2" in html  # saved with another scikit-learn
    assert "<code>f0</code> double" in html  # the signature's columns
    assert "accuracy: 0.97" in html
    assert "Promote<span" in html and 'id="upload-form"' in html


def test_viewer_sees_no_promote_button_and_cannot_post(viewer_client, iris):
    page = viewer_client.get("/models/acme/iris/")
    assert page.status_code == 200
    assert b"Promote<span" not in page.content and b'id="upload-form"' not in page.content
    assert (
        viewer_client.post("/models/acme/iris/versions/1/stage/", {"stage": "production", "confirmed": "yes"}).status_code == 403
    )
    assert viewer_client.post("/models/acme/iris/rollback/", {"confirmed": "yes"}).status_code == 403
    assert viewer_client.post("/models/acme/iris/versions/new/", {}).status_code == 403
    assert ModelVersion.objects.filter(registered_model=iris, stage=Stage.PRODUCTION).count() == 0


def test_promote_asks_first_then_rollback_restores_previous_version(owner_client, iris):
    asked = owner_client.post("/models/acme/iris/versions/1/stage/", {"stage": "production", "reason": ""})
    assert asked.status_code == 200 and b"Promote to production" in asked.content and b'name="reason"' in asked.content
    assert not Release.objects.exists()
    owner_client.post("/models/acme/iris/versions/1/stage/", {"stage": "production", "confirmed": "yes", "reason": "first"})
    owner_client.post("/models/acme/iris/versions/2/stage/", {"stage": "production", "confirmed": "yes"})
    iris.refresh_from_db()
    assert iris.production_version.number == 2
    page = owner_client.get("/models/acme/iris/")
    assert b"Roll back to v1" in page.content
    response = owner_client.post("/models/acme/iris/rollback/", {"confirmed": "yes", "reason": "v2 misbehaves"}, follow=True)
    assert b"version 1 in production" in response.content
    iris.refresh_from_db()
    assert iris.production_version.number == 1
    assert list(Release.objects.filter(registered_model=iris).order_by("number").values_list("kind", "reason")) == [
        ("promote", "first"),
        ("promote", ""),
        ("rollback", "v2 misbehaves"),
    ]
    assert b"v2 misbehaves" in response.content  # the releases history


def test_archive_production_version_asks_and_warns(owner_client, iris):
    owner_client.post("/models/acme/iris/versions/2/stage/", {"stage": "production", "confirmed": "yes"})
    asked = owner_client.post("/models/acme/iris/versions/2/stage/", {"stage": "archived"})
    assert b"stops serving" in asked.content
    owner_client.post("/models/acme/iris/versions/2/stage/", {"stage": "archived", "confirmed": "yes"})
    assert ModelVersion.objects.get(registered_model=iris, number=2).stage == Stage.ARCHIVED


def test_upload_form_without_javascript(owner_client, tenant_a):
    from accounts.principals import Caller
    from registry import services

    services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="flowers")
    bad = owner_client.post(
        "/models/acme/flowers/versions/new/", {"file": upload_file(joblib_bytes(iris_model())), "metrics": "{not json"}
    )
    assert bad.status_code == 400 and error_next_to(bad, "metrics") == "not valid JSON"
    missing = owner_client.post("/models/acme/flowers/versions/new/", {"description": "no file"})
    assert missing.status_code == 400 and error_next_to(missing, "file")
    response = owner_client.post(
        "/models/acme/flowers/versions/new/",
        {
            "file": upload_file(joblib_bytes(iris_model())),
            "metrics": '{"accuracy": 0.97}',
            "input_example": orjson.dumps([IRIS_ROW]).decode(),
        },
    )
    assert response.status_code == 302
    version = ModelVersion.objects.get(registered_model__name="flowers")
    assert version.number == 1 and version.metrics == {"accuracy": 0.97} and version.input_example == [IRIS_ROW]


def test_delete_model_asks_first_and_is_for_admins(owner_client, member_client, tenant_a, iris):
    assert b"Delete iris" in owner_client.get("/models/acme/iris/").content
    assert b"Delete iris" not in member_client.get("/models/acme/iris/").content
    assert member_client.post("/models/acme/iris/delete/", {"confirmed": "yes"}).status_code == 403
    asked = owner_client.post("/models/acme/iris/delete/")
    assert asked.status_code == 200 and b"Delete acme/iris?" in asked.content and b'name="confirmed" value="yes"' in asked.content
    iris.refresh_from_db()
    assert iris.deleted_at is None
    response = owner_client.post("/models/acme/iris/delete/", {"confirmed": "yes"}, follow=True)
    assert response.redirect_chain == [("/orgs/acme/", 302)] and b"Model acme/iris deleted." in response.content
    iris.refresh_from_db()
    assert iris.deleted_at is not None
    assert owner_client.get("/models/acme/iris/").status_code == 404
    assert owner_client.post("/orgs/acme/models/new/", {"name": "iris"}).status_code == 302  # the name is free again


# ---------------------------------------------------------------------------- try it


def test_try_page_generates_fields_and_snippets(owner_client, iris):
    ModelVersion.objects.filter(registered_model=iris, number=1).update(input_example=[IRIS_ROW])
    page = owner_client.get("/models/acme/iris/versions/1/try/")
    assert page.status_code == 200
    html = page.content.decode()
    for index, value in enumerate(IRIS_ROW):
        assert f'id="col-{index}" name="f{index}" type="number" step="any" inputmode="decimal" value="{value}"' in html
    assert 'data-predict-url="/api/v1/models/acme/iris/versions/1/predict"' in html
    assert "X-API-Key: $MODELHOST_API_KEY" in html
    assert "import requests" in html
    assert "/v2/models/iris/versions/1/infer" in html and "&quot;input-0&quot;" in html and "FP64" in html and "[1, 4]" in html
    assert "/api/v1/models/acme/iris/versions/1/invocations" in html and "dataframe_split" in html
    assert owner_client.get("/models/acme/iris/versions/9/try/").status_code == 404


def test_try_snippets_show_the_values_typed_in_the_form(owner_client, iris):
    """htmx sends the form's values as it changes and swaps in the snippets alone; without
    JavaScript the form's submit reloads the page with them."""
    ModelVersion.objects.filter(registered_model=iris, number=1).update(input_example=[IRIS_ROW])
    typed = {"f0": "6.3", "f1": "2.9", "f2": "", "f3": "wide"}
    partial = owner_client.get("/models/acme/iris/versions/1/try/", typed, HTTP_HX_REQUEST="true")
    assert partial.status_code == 200 and "HX-Request" in partial["Vary"]
    text = html.unescape(partial.content.decode())
    assert text.lstrip().startswith('<section aria-labelledby="snippets-title" id="snippets">') and "<html" not in text
    assert """-d '{"inputs": [[6.3, 2.9, null, "wide"]], "parameters": {"probabilities": true}}'""" in text
    assert "json={'inputs': [[6.3, 2.9, None, 'wide']], 'parameters': {'probabilities': True}}" in text
    assert '"data": [[6.3, 2.9, null, "wide"]]' in text  # V2
    assert '"dataframe_split": {"columns": ["f0", "f1", "f2", "f3"], "data": [[6.3, 2.9, null, "wide"]]}' in text
    assert "the values in the form" in text
    page = owner_client.get("/models/acme/iris/versions/1/try/", typed).content.decode()
    assert 'id="col-0" name="f0" type="number" step="any" inputmode="decimal" value="6.3"' in page
    assert 'id="col-3" name="f3" type="number" step="any" inputmode="decimal" value="wide"' in page
    assert "[[6.3, 2.9, null, &quot;wide&quot;]]" in page
    example = owner_client.get("/models/acme/iris/versions/1/try/").content.decode()
    assert "[[5.1, 3.5, 1.4, 0.2]]" in example and "the example row" in example


def test_try_page_posts_with_session_and_csrf(tenant_a, iris):
    """What the page's script does: the predict endpoint accepts the session with X-CSRFToken."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(tenant_a.user)
    client.get("/models/acme/iris/versions/1/try/")
    token = client.cookies["csrftoken"].value
    body = orjson.dumps({"inputs": [IRIS_ROW], "parameters": {"probabilities": True}})
    refused = client.post("/api/v1/models/acme/iris/versions/1/predict", body, content_type="application/json")
    assert refused.status_code == 403
    answer = client.post(
        "/api/v1/models/acme/iris/versions/1/predict", body, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert answer.status_code == 200
    assert answer.json()["predictions"] == [0] and len(answer.json()["probabilities"][0]) == 3


# ---------------------------------------------------------------------------- isolation

OTHER_ORG_PAGES = [
    "/orgs/acme/",
    "/orgs/acme/members/",
    "/orgs/acme/api-keys/",
    "/orgs/acme/audit/",
    "/orgs/acme/settings/",
    "/models/acme/iris/",
    "/models/acme/iris/versions/1/try/",
    "/models/acme/iris/versions/1/importance/",
]


@pytest.mark.parametrize("path", OTHER_ORG_PAGES)
def test_another_organizations_page_answers_404_like_a_missing_one(tenant_b, iris, path):
    outsider = signed_in(tenant_b.user)
    response = outsider.get(path)
    missing = outsider.get(path.replace("acme", "no-such-org"))
    assert response.status_code == 404 == missing.status_code
    assert without_csrf(response.content) == without_csrf(missing.content)
    assert b"iris" not in response.content.replace(b"/models/acme/iris", b"")


@pytest.mark.parametrize(
    "path, data",
    [
        ("/models/acme/iris/versions/1/stage/", {"stage": "production", "confirmed": "yes"}),
        ("/models/acme/iris/rollback/", {"confirmed": "yes"}),
        ("/models/acme/iris/delete/", {"confirmed": "yes"}),
        ("/models/acme/iris/versions/new/", {}),
        ("/orgs/acme/models/new/", {"name": "stolen"}),
        ("/orgs/acme/members/", {"email": "owner@globex.example", "role": "owner"}),
        ("/orgs/acme/api-keys/", {"name": "stolen", "scopes": ["admin"]}),
    ],
)
def test_another_organizations_actions_answer_404(tenant_b, iris, path, data):
    assert signed_in(tenant_b.user).post(path, data).status_code == 404
    assert not ModelVersion.objects.filter(stage=Stage.PRODUCTION).exists()
    iris.refresh_from_db()
    assert iris.deleted_at is None


def test_pages_need_login(client, iris):
    for path in ["/", "/orgs/acme/", "/models/acme/iris/", "/models/acme/iris/versions/1/try/", "/password/"]:
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next="), path


def test_member_of_two_organizations_sees_both_in_switcher(tenant_a, tenant_b):
    user = member_of(tenant_a.organization, Role.MEMBER, email="both@example.com")
    Membership.objects.create(user=user, organization=tenant_b.organization, role=Role.VIEWER)
    page = signed_in(user).get("/orgs/globex/")
    assert b'<option value="acme"' in page.content and b'<option value="globex" selected' in page.content
