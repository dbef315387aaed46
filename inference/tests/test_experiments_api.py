"""Experiments: start (validated), route by unit, stop, promote the winner as a release."""

import pytest
from sklearn.dummy import DummyClassifier

from accounts.models import AuditEvent
from accounts.principals import Caller
from inference import records
from inference.models import Experiment, PredictionRecord
from registry import services as registry_services
from registry.models import Release
from registry.tests import factories as f

pytestmark = pytest.mark.django_db
ROW = f.IRIS_ROW
URL = "/api/v1/models/acme/iris/experiments"


@pytest.fixture
def iris(tenant_a):
    """v1 (production) predicts like iris; v2 always says 2; v3 always says 1."""
    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, promote=True)
    f.create_version(model, DummyClassifier(strategy="constant", constant=2).fit(*f.iris_data()))
    f.create_version(model, DummyClassifier(strategy="constant", constant=1).fit(*f.iris_data()))
    return model


def start(client, body=None, **changes):
    body = body or {
        "name": "v2-vs-v1",
        "variants": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
        "metric": "accuracy",
    }
    return client.post(URL, {**body, **changes}, format="json")


def test_start_an_experiment_and_list_it(tenant_a, iris, django_capture_on_commit_callbacks):
    client = tenant_a.key_client()
    with django_capture_on_commit_callbacks(execute=True):
        response = start(client, min_samples=30)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["model"] == "acme/iris"
    assert body["status"] == "running"
    assert body["control"] == 1
    assert body["min_samples"] == 30
    assert body["variants"] == [{"name": "v1", "version": 1, "weight": 50}, {"name": "v2", "version": 2, "weight": 50}]
    experiment = Experiment.objects.get(id=body["id"])
    assert experiment.variants[1]["version_id"] == iris.versions.get(number=2).id
    assert AuditEvent.objects.filter(action="experiment.started", target_id=str(experiment.id)).exists()
    listed = client.get(URL).json()
    assert [e["id"] for e in listed["results"]] == [body["id"]]
    assert client.get(f"/api/v1/experiments/{body['id']}").json()["name"] == "v2-vs-v1"


@pytest.mark.parametrize(
    "changes, field, fragment",
    [
        pytest.param(
            {"variants": [{"version": 1, "weight": 50}, {"version": 9, "weight": 50}]},
            "variants[1].version",
            "no version 9",
            id="unknown-version",
        ),
        pytest.param(
            {"variants": [{"version": 1, "weight": 50}, {"version": 2, "weight": 40}]},
            "variants",
            "sum to 90",
            id="weights-under-100",
        ),
        pytest.param(
            {"variants": [{"version": 1, "weight": 70}, {"version": 2, "weight": 40}]},
            "variants",
            "sum to 110",
            id="weights-over-100",
        ),
        pytest.param(
            {"variants": [{"version": 1, "weight": 50}, {"version": 1, "weight": 50}]},
            "variants[1].version",
            "appears twice",
            id="same-version-twice",
        ),
        pytest.param({"variants": [{"version": 1, "weight": 100}]}, "variants", "2 to 10 variants", id="one-variant"),
        pytest.param(
            {"variants": [{"version": 1, "weight": 0}, {"version": 2, "weight": 100}]},
            "variants[0].weight",
            "1 to 99",
            id="zero-weight",
        ),
        pytest.param({"metric": "mae"}, "metric", "needs a regression model", id="metric-for-another-task"),
        pytest.param({"metric": "auc"}, "metric", "valid choice", id="unknown-metric"),
        pytest.param(
            {"variants": [{"version": 1, "weight": 50, "colour": "red"}, {"version": 2, "weight": 50}]},
            "variants.0.colour",
            "Unknown field",
            id="unknown-variant-field",
        ),
    ],
)
def test_bad_experiments_name_the_field(tenant_a, iris, changes, field, fragment):
    response = start(tenant_a.key_client(), **changes)
    assert response.status_code == 400, response.content
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert problem["errors"][0]["field"] == field
    assert fragment in problem["errors"][0]["message"]
    assert not Experiment.objects.exists()


def test_only_one_experiment_runs_per_model(tenant_a, iris):
    client = tenant_a.key_client()
    assert start(client).status_code == 201
    second = start(client, name="another")
    assert second.status_code == 409
    assert second.json()["code"] == "conflict"
    assert "stop it first" in second.json()["detail"]


def test_a_viewer_key_cannot_start_an_experiment(tenant_a, iris):
    from accounts import services

    _, plaintext = services.create_api_key(
        caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="ro", scopes=["read"]
    )
    response = start(tenant_a.key_client(plaintext))
    assert response.status_code == 403


def test_requests_follow_the_experiment_and_stick_to_their_variant(tenant_a, iris, django_capture_on_commit_callbacks):
    client = tenant_a.key_client()

    def predict(unit):
        return client.post("/api/v1/models/acme/iris/predict", {"inputs": [ROW], "unit_id": unit}, format="json").json()

    assert predict("user-1")["variant"] is None  # the route is cached before the experiment
    with django_capture_on_commit_callbacks(execute=True):
        experiment_id = start(client).json()["id"]
    answers = {unit: predict(unit) for unit in (f"user-{i}" for i in range(40))}
    assert {a["variant"] for a in answers.values()} == {"v1", "v2"}
    for unit, answer in answers.items():
        again = predict(unit)
        assert (again["variant"], again["version"]) == (answer["variant"], answer["version"])
        assert again["predictions"] == ([2] if answer["variant"] == "v2" else [0])
    records.drain_stream()
    recorded = PredictionRecord.objects.filter(experiment_id=experiment_id)
    assert recorded.count() == 80
    assert set(recorded.values_list("variant", flat=True)) == {"v1", "v2"}


def test_stop_returns_traffic_to_production(tenant_a, iris, django_capture_on_commit_callbacks):
    client = tenant_a.key_client()
    with django_capture_on_commit_callbacks(execute=True):
        experiment_id = start(client, variants=[{"version": 1, "weight": 1}, {"version": 2, "weight": 99}]).json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/experiments/{experiment_id}/stop")
    assert response.status_code == 200
    assert response.json()["status"] == "stopped"
    assert response.json()["stopped_at"] is not None
    answer = client.post("/api/v1/models/acme/iris/predict", {"inputs": [ROW], "unit_id": "u"}, format="json").json()
    assert (answer["variant"], answer["version"]) == (None, 1)
    again = client.post(f"/api/v1/experiments/{experiment_id}/stop")
    assert again.status_code == 409


def test_promote_the_winner_makes_it_production_as_an_experiment_release(tenant_a, iris, django_capture_on_commit_callbacks):
    client = tenant_a.jwt_client()
    experiment_id = start(client, variants=[{"version": 1, "weight": 50}, {"version": 3, "weight": 50}]).json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/experiments/{experiment_id}/promote", {"version": 3}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["experiment"]["status"] == "stopped"
    assert body["experiment"]["winner_version"] == 3
    assert body["release"]["kind"] == "experiment"
    assert (body["release"]["from_version"], body["release"]["to_version"]) == (1, 3)
    release = Release.objects.get(registered_model=iris, number=body["release"]["number"])
    assert release.kind == Release.Kind.EXPERIMENT
    assert "v2-vs-v1" in release.reason
    iris.refresh_from_db()
    assert iris.production_version.number == 3
    answer = tenant_a.key_client().post("/api/v1/models/acme/iris/predict", {"inputs": [ROW]}, format="json").json()
    assert (answer["version"], answer["predictions"], answer["variant"]) == (3, [1], None)
    assert client.post(f"/api/v1/experiments/{experiment_id}/promote", {"version": 3}, format="json").status_code == 409


def test_promoting_the_control_that_is_already_production_makes_no_release(tenant_a, iris):
    client = tenant_a.key_client()
    experiment_id = start(client).json()["id"]
    before = Release.objects.filter(registered_model=iris).count()
    response = client.post(f"/api/v1/experiments/{experiment_id}/promote", {"version": 1}, format="json")
    assert response.status_code == 200
    assert response.json()["release"] is None
    assert response.json()["experiment"]["winner_version"] == 1
    assert Release.objects.filter(registered_model=iris).count() == before


def test_promote_refuses_a_version_outside_the_experiment(tenant_a, iris):
    client = tenant_a.key_client()
    experiment_id = start(client).json()["id"]
    response = client.post(f"/api/v1/experiments/{experiment_id}/promote", {"version": 3}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "version"
    assert Experiment.objects.get(id=experiment_id).status == "running"
