"""Live mirrors: the API that starts and stops them, the hot path's draw, the worker's side run
here in process (the real Celery worker runs it in test_mirror_worker.py), and the report,
checked against scikit-learn's answers on the same rows."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neighbors import KNeighborsClassifier

from accounts.models import Membership, Role
from accounts.principals import Caller
from analytics.models import MirroredPrediction, MirrorReport
from analytics.services import mirrors
from analytics.tests import factories as af
from analytics.tests.test_replays import stump
from inference import predictors, records
from inference.models import Mirror, PredictionRecord
from registry import services as registry_services
from registry.models import ModelVersion
from registry.tests import factories as rf

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/acme/iris/mirror"
PREDICT = "/api/v1/models/acme/iris/predict"


def start(client, body: dict | None = None, url: str = URL):
    return client.post(url, body or {"version": 2, "fraction": 0.5}, format="json")


@pytest.fixture
def iris_pair(tenant_a):
    """acme/iris: v1 (logistic regression) in production, v2 (a one-split stump) a candidate."""
    model, _ = af.iris_model(tenant_a)
    rf.create_version(model, stump())
    model.refresh_from_db()
    return model


def _allow_missing_first_column(version: ModelVersion) -> None:
    signature = version.signature
    signature["inputs"][0]["allow_missing"] = True
    ModelVersion.objects.filter(pk=version.pk).update(signature=signature)


@pytest.fixture
def failing_candidate(tenant_a):
    """acme/iris: v1 a gradient-boosted tree that handles missing values, in production; v2 a
    nearest-neighbours model that raises on them (in its runner). Both take a missing sepal length."""
    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    x, y = rf.iris_data()
    production = rf.create_version(model, HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y), promote=True)
    candidate = rf.create_version(model, KNeighborsClassifier(n_neighbors=15).fit(x, y))
    _allow_missing_first_column(production)
    _allow_missing_first_column(candidate)
    model.refresh_from_db()
    return model


def serve_all(client, rows) -> list[dict]:
    answers = []
    for row in rows:
        response = client.post(PREDICT, {"inputs": [row]}, format="json")
        assert response.status_code == 200, response.content
        answers.append(response.json())
    records.flush_local_buffer()  # reads the stream's last replies; a record it refused is written from here
    records.drain_stream()
    return answers


# ---------------------------------------------------------------------------- the API


def test_an_owner_starts_reads_and_stops_a_mirror(tenant_a, iris_pair):
    client = tenant_a.jwt_client()

    started = start(client, {"version": 2, "fraction": 0.25, "max_rows_per_hour": 500})

    assert started.status_code == 201, started.content
    body = started.json()
    assert started["Location"] == URL
    assert (body["version"], body["baseline_version"], body["fraction"], body["max_rows_per_hour"], body["status"]) == (
        2,
        1,
        0.25,
        500,
        "running",
    )
    assert (body["rows_mirrored"], body["rows_compared"], body["report"]) == (0, None, {})
    assert client.get(URL).json()["id"] == body["id"]
    again = start(client)
    assert again.status_code == 409
    assert again.json()["mirror_id"] == body["id"]

    stopped = client.post(f"{URL}/stop")

    assert stopped.status_code == 200
    assert (stopped.json()["status"], stopped.json()["stop_reason"]) == ("stopped", "stopped by its owner")
    assert client.get(URL).json()["status"] == "stopped"
    assert client.post(f"{URL}/stop").status_code == 409
    assert start(client).status_code == 201  # a stopped mirror frees the model's one place


def test_a_model_that_never_mirrored_is_404_saying_how_to_start(tenant_a, iris_pair):
    response = tenant_a.key_client().get(URL)

    assert response.status_code == 404
    assert "POST /api/v1/models/acme/iris/mirror" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"version": 2, "fraction": 0}, "fraction"),
        ({"version": 2, "fraction": -0.1}, "fraction"),
        ({"version": 2, "fraction": 0.51}, "fraction"),
        ({"version": 2, "fraction": 1}, "fraction"),
        ({"version": 2, "fraction": "half"}, "fraction"),
        ({"version": 2}, "fraction"),
        ({"version": 2, "fraction": 0.1, "max_rows_per_hour": 0}, "max_rows_per_hour"),
        ({"version": 2, "fraction": 0.1, "max_rows_per_hour": 10**9}, "max_rows_per_hour"),
        ({"version": 1, "fraction": 0.1}, "version"),
        ({"version": 2, "fraction": 0.1, "share": 0.1}, "share"),
    ],
    ids=[
        "zero",
        "negative",
        "over-half",
        "all",
        "text",
        "missing",
        "no-rows",
        "too-many-rows",
        "production-itself",
        "unknown-field",
    ],
)
def test_a_mirror_that_cannot_start_is_400_naming_the_field(tenant_a, iris_pair, body, field):
    response = start(tenant_a.key_client(), body)

    assert response.status_code == 400, response.content
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert [e["field"] for e in problem["errors"]] == [field]
    assert not Mirror.objects.exists()


def test_a_version_missing_is_404_and_one_of_another_task_is_400(tenant_a, iris_pair):
    rf.create_version(iris_pair, rf.regression_model())
    client = tenant_a.key_client()

    assert start(client, {"version": 9, "fraction": 0.1}).status_code == 404
    response = start(client, {"version": 3, "fraction": 0.1})
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "version", "message": "task differs from production's"}]


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_only_owners_and_admins_start_or_stop_mirrors(tenant_a, iris_pair, role):
    start(tenant_a.key_client())
    Membership.objects.filter(organization=tenant_a.organization, user=tenant_a.user).update(role=role)
    client = tenant_a.jwt_client()

    assert client.post(f"{URL}/stop").status_code == 403
    assert start(client, url=URL).status_code == 403
    assert client.get(URL).status_code == 200
    Membership.objects.filter(organization=tenant_a.organization, user=tenant_a.user).update(role=Role.ADMIN)
    assert client.post(f"{URL}/stop").status_code == 200


def test_another_organization_gets_404s_and_its_own_model_is_untouched(tenant_a, tenant_b, iris_pair):
    af.iris_model(tenant_b, versions=2)  # globex/iris, a model of the same name
    start(tenant_a.key_client())
    intruder = tenant_b.key_client()
    missing = intruder.get("/api/v1/models/acme/nothing/mirror")

    for response in (
        intruder.get(URL),
        start(intruder),
        intruder.post(f"{URL}/stop"),
    ):
        assert response.status_code == 404
        assert response.json() == missing.json()
    assert intruder.get("/api/v1/models/globex/iris/mirror").status_code == 404  # globex's model has none
    assert Mirror.objects.get().registered_model == iris_pair
    assert tenant_a.key_client().get(URL).json()["status"] == "running"


# ---------------------------------------------------------------------------- the hot path


def test_the_hot_path_only_flags_a_share_of_production_requests(tenant_a, iris_pair, settings, django_assert_num_queries):
    settings.API_KEY_LAST_USED_WRITE_SECONDS = 3600
    client = tenant_a.key_client()
    start(client, {"version": 2, "fraction": 0.5})
    x, _ = rf.iris_data()
    client.post(PREDICT, {"inputs": [x[0].tolist()]}, format="json")  # warm: key and route cached
    random.seed(3)

    with django_assert_num_queries(0):
        answers = [client.post(PREDICT, {"inputs": [row.tolist()]}, format="json") for row in x[1:101]]
    # Asking for a version by number is not production traffic: never mirrored.
    client.post("/api/v1/models/acme/iris/versions/1/predict", {"inputs": [x[0].tolist()], "unit_id": "by-number"}, format="json")
    records.drain_stream()

    assert [a.json()["predictions"][0] for a in answers] == rf.iris_model().predict(x[1:101]).tolist()
    assert {a.json()["version"] for a in answers} == {1}
    mirror = Mirror.objects.get()
    flagged = PredictionRecord.objects.filter(mirror_id=mirror.id).count()
    assert 25 < flagged < 75  # about half of the 100 (seeded)
    assert PredictionRecord.objects.get(unit_id="by-number").mirror_id is None
    assert PredictionRecord.objects.filter(mirror_id__isnull=True).count() == 102 - flagged


def test_the_caller_never_waits_for_the_candidate_nor_sees_it_fail(tenant_a, failing_candidate, monkeypatch):
    """With every request mirrored to a candidate that raises on a third of them, the answers are
    production's, all 200, and the request predicts production only (the candidate is not called
    on the way)."""
    client = tenant_a.key_client()
    start(client, {"version": 2, "fraction": 0.5})
    Mirror.objects.update(fraction=1.0)  # every request, so that each one is checked (the API caps it at half)
    from inference import routing

    routing.clear_routes()
    x, _ = rf.iris_data()
    rows = [[None if i % 3 == 0 else float(x[i, 0]), *map(float, x[i, 1:])] for i in range(60)]
    called = []
    real_predict = predictors.predict
    monkeypatch.setattr(predictors, "predict", lambda **kw: called.append(kw["target"].number) or real_predict(**kw))

    answers = serve_all(client, rows)

    production = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(*rf.iris_data())
    expected = production.predict(np.array(rows, dtype=np.float64)).tolist()
    assert [a["predictions"][0] for a in answers] == expected
    assert {a["version"] for a in answers} == {1}
    assert called == [1] * 60  # the candidate is predicted by the worker, not here
    assert PredictionRecord.objects.filter(mirror_id__isnull=False, status=200).count() == 60


# ---------------------------------------------------------------------------- the worker's side


def test_the_report_accumulates_and_counts_the_candidates_failures(tenant_a, failing_candidate):
    client = tenant_a.key_client()
    mirror_id = start(client).json()["id"]
    Mirror.objects.update(fraction=1.0)
    from inference import routing

    routing.clear_routes()
    x, y = rf.iris_data()
    rows = [[None if i % 3 == 0 else float(x[i, 0]), *map(float, x[i, 1:])] for i in range(150)]
    production = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y)
    candidate = KNeighborsClassifier(n_neighbors=15).fit(x, y)

    answers_first = serve_all(client, rows[:90])
    assert mirrors.mirror_once(mirror_id=mirror_id) == 90
    first = client.get(URL).json()
    serve_all(client, rows[90:])
    assert mirrors.mirror_once(mirror_id=mirror_id) == 60
    assert mirrors.mirror_once(mirror_id=mirror_id) == 0  # nothing new: nothing predicted twice

    body = client.get(URL).json()
    answered = [i for i in range(150) if i % 3]
    old = production.predict(np.array(rows, dtype=np.float64))[answered]
    new = candidate.predict(x[answered])
    assert (first["rows_mirrored"], first["report"]["failures"]["candidate_only"]) == (90, 30)
    assert (body["rows_mirrored"], body["rows_compared"]) == (150, 100)
    assert body["agreement"] == pytest.approx(np.mean(old == new))
    report = body["report"]
    assert report["failures"]["candidate_only"] == 50
    first_failure = report["failures"]["first"]["candidate_only"][0]
    assert first_failure["code"] == "model_error"
    assert first_failure["message"].startswith("The model raised ValueError on these rows")
    assert first_failure["prediction_id"] == answers_first[0]["id"]  # row 0 is the first with a missing value
    assert report["probability_shift"] is None
    assert report["latency"]["candidate_predict"]["records"] == 100
    assert report["mirror"]["fraction"] == 1.0
    assert MirroredPrediction.objects.filter(mirror_id=mirror_id).count() == 150


def test_feedback_sent_after_mirroring_counts_in_the_report(tenant_a, iris_pair):
    client = tenant_a.key_client()
    mirror_id = start(client).json()["id"]
    Mirror.objects.update(fraction=1.0)
    from inference import routing

    routing.clear_routes()
    x, y = rf.iris_data()
    answers = serve_all(client, x[:40].tolist())
    mirrors.mirror_once(mirror_id=mirror_id)
    for i, answer in enumerate(answers):
        assert client.post(f"/api/v1/predictions/{answer['id']}/feedback", {"label": int(y[i])}, format="json").status_code == 201

    mirrors.mirror_once(mirror_id=mirror_id)  # no new row, report just computed: left as it is
    assert client.get(URL).json()["report"]["feedback"] is None
    report = MirrorReport.objects.get()
    report.report["computed_at"] -= mirrors.REPORT_REFRESH_SECONDS + 1
    report.save()
    mirrors.mirror_once(mirror_id=mirror_id)  # still no new row, but the report is stale

    feedback = client.get(URL).json()["report"]["feedback"]
    assert (feedback["metric"], feedback["rows"]) == ("accuracy", 40)
    assert feedback["production"]["value"] == pytest.approx(np.mean(rf.iris_model().predict(x[:40]) == y[:40]))
    assert feedback["candidate"]["value"] == pytest.approx(np.mean(stump().predict(x[:40]) == y[:40]))


def test_the_hourly_cap_bounds_what_the_candidate_predicts(tenant_a, iris_pair):
    client = tenant_a.key_client()
    mirror_id = start(client, {"version": 2, "fraction": 0.5, "max_rows_per_hour": 25}).json()["id"]
    Mirror.objects.update(fraction=1.0)
    from inference import routing

    routing.clear_routes()
    x, _ = rf.iris_data()
    serve_all(client, x[:40].tolist())

    assert mirrors.mirror_once(mirror_id=mirror_id) == 25
    assert mirrors.mirror_once(mirror_id=mirror_id) == 0

    body = client.get(URL).json()
    assert (body["rows_mirrored"], body["rows_over_cap"], body["rows_compared"]) == (25, 15, 25)


def test_only_the_organizations_own_records_are_mirrored(tenant_a, tenant_b, iris_pair):
    """A record flagged with acme's mirror but stored under another organization (a forged or
    corrupt row) is not mirrored."""
    from datetime import timedelta

    from django.utils import timezone

    mirror_id = start(tenant_a.key_client()).json()["id"]
    forged = af.record(iris_pair.production_version, at=timezone.now() - timedelta(minutes=1), mirror=mirror_id)
    forged["org"] = tenant_b.organization.id
    own = af.record(iris_pair.production_version, at=timezone.now(), mirror=mirror_id)
    af.ingest([forged, own])

    assert mirrors.mirror_once(mirror_id=mirror_id) == 1

    assert list(MirroredPrediction.objects.values_list("prediction_id", flat=True)) == [own["id"]]
    assert MirrorReport.objects.get().organization == tenant_a.organization


def test_a_promotion_stops_the_mirror_and_keeps_its_report(tenant_a, iris_pair, django_capture_on_commit_callbacks):
    client = tenant_a.key_client()
    start(client)

    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/api/v1/models/acme/iris/versions/2/stage", {"stage": "production"}, format="json").status_code == 200

    body = client.get(URL).json()
    assert (body["status"], body["stop_reason"]) == ("stopped", "production changed")
    assert start(client, {"version": 1, "fraction": 0.1}).status_code == 201  # the old production, mirrored against the new


def test_an_operator_stops_a_mirror_from_the_admin(tenant_a, iris_pair, admin_client, django_capture_on_commit_callbacks):
    start(tenant_a.key_client())
    mirror = Mirror.objects.get()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post("/admin/inference/mirror/", {"action": "stop_mirrors", "_selected_action": [mirror.id]})

    assert response.status_code == 302
    mirror.refresh_from_db()
    assert (mirror.status, mirror.stop_reason) == ("stopped", "stopped by an operator")
    assert admin_client.get(f"/admin/inference/mirror/{mirror.id}/change/").status_code == 200
