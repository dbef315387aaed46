"""Every tenant URL: another organization's resource is indistinguishable from a missing one."""

import pytest

from platform_site.tests.isolation import MISSING, TENANT_ENDPOINTS, Endpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(tenant_a) -> dict:
    """Tenant A's resources by placeholder name; apps extend it as they add resources."""
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import Membership
    from accounts.principals import Caller
    from analytics.models import DriftReport, Replay
    from inference.experiments import services as experiment_services
    from registry import services as registry_services
    from registry.tests import factories

    membership = Membership.objects.get(organization=tenant_a.organization, user=tenant_a.user)
    caller = Caller(user=tenant_a.user)
    model = registry_services.create_model(caller=caller, organization=tenant_a.organization, name="secret-model")
    version = factories.create_version(model, promote=True)
    prediction = (
        tenant_a.key_client()
        .post("/api/v1/models/acme/secret-model/predict", {"inputs": [factories.IRIS_ROW]}, format="json")
        .json()["id"]
    )
    factories.create_version(model)
    experiment = experiment_services.create_experiment(
        caller=caller,
        model=model,
        name="secret-experiment",
        variants=[{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
    )
    drift_report = DriftReport.objects.create(
        organization=tenant_a.organization,
        registered_model=model,
        version=version,
        trigger="api",
        window_start=timezone.now() - timedelta(hours=1),
        window_end=timezone.now(),
        reference_source="reference_data",
        reference_rows=1,
        current_rows=1,
        drift_share_threshold=0.5,
        n_features=0,
        drifted_features=0,
        share_drifted=0.0,
        is_drift=False,
    )
    replay = Replay.objects.create(
        organization=tenant_a.organization,
        registered_model=model,
        version=version,
        baseline_version=version,
        rows_requested=10,
        status="done",
    )
    from django.core.files.uploadedfile import SimpleUploadedFile

    from inference.tests.test_batch_api import run_job

    job = (
        tenant_a.key_client()
        .post(
            "/api/v1/models/acme/secret-model/batch-jobs",
            {"file": SimpleUploadedFile("rows.csv", b"a,b,c,d\n5.1,3.5,1.4,0.2\n")},
            format="multipart",
        )
        .json()["id"]
    )
    run_job(job)
    return {
        "org": tenant_a.organization.slug,
        "member_id": membership.id,
        "key_id": tenant_a.api_key_id,
        "model": model.name,
        "version": version.number,
        "prediction": prediction,
        "job": job,
        "experiment": experiment.id,
        "drift_report": drift_report.id,
        "replay": replay.id,
    }


def call(client, endpoint: Endpoint, values: dict):
    path = endpoint.path.format(**values)
    body = {key: value.format(**values) if isinstance(value, str) else value for key, value in endpoint.body.items()}
    return getattr(client, endpoint.method.lower())(path, body, format="json")


def secrets_of(world: dict, tenant_a) -> list[str]:
    return [tenant_a.organization.slug, tenant_a.user.email, tenant_a.api_key.split("_")[1], "secret-model"]


@pytest.mark.parametrize("endpoint", TENANT_ENDPOINTS, ids=str)
@pytest.mark.parametrize("credential", ["jwt", "api_key"])
def test_other_tenant_sees_nothing(endpoint, credential, world, tenant_a, tenant_b):
    client = tenant_b.jwt_client() if credential == "jwt" else tenant_b.key_client()
    response = call(client, endpoint, world)
    if endpoint.is_list:
        assert response.status_code == 200
        text = response.content.decode()
        for secret in secrets_of(world, tenant_a):
            assert secret not in text
        return
    missing = call(client, endpoint, {**world, **{k: v for k, v in MISSING.items() if k in world}})
    assert response.status_code == 404, response.content
    assert response.content == missing.content
    assert response["Content-Type"] == missing["Content-Type"]
    if not endpoint.path.endswith("/invocations"):  # the MLflow protocol keeps its own error shape
        assert response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "endpoint", [e for e in TENANT_ENDPOINTS if not e.is_list and (e.method == "GET" or "predict" in e.path)], ids=str
)
def test_owner_reaches_their_own_resources(endpoint, world, tenant_a):
    """The harness is only meaningful if the same URL works for its owner."""
    response = call(tenant_a.key_client(), endpoint, world)
    assert response.status_code in (200, 201), response.content
