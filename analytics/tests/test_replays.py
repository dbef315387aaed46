"""Replays through the API and the service: real versions, real records, figures checked against
scikit-learn, numpy and scipy computed here on the same rows."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from scipy import stats
from sklearn.linear_model import LinearRegression
from sklearn.metrics import confusion_matrix
from sklearn.tree import DecisionTreeClassifier

from accounts.models import Membership, Role
from accounts.principals import Caller
from analytics.models import Replay, UsageRollup
from analytics.services import replays
from analytics.tests import factories as af
from inference.models import PredictionRecord
from platform_site.redis_client import get_redis
from registry import services as registry_services
from registry.tests import factories as rf

pytestmark = pytest.mark.django_db


def url(version: int = 2, org: str = "acme", model: str = "iris") -> str:
    return f"/api/v1/models/{org}/{model}/versions/{version}/replays"


def stump():
    """A one-split tree: it agrees with the logistic regression on setosa and little else."""
    x, y = rf.iris_data()
    return DecisionTreeClassifier(max_depth=1, random_state=0).fit(x, y)


def serve(version, rows, *, outputs, at=None) -> list[dict]:
    """One single-row prediction record per row, as the hot path publishes them."""
    at = at or timezone.now() - timedelta(minutes=30)
    return af.ingest(
        [
            af.record(version, at=at + timedelta(seconds=i), **{"in": [list(map(float, row))], "out": [outputs[i]]})
            for i, row in enumerate(rows)
        ]
    )


@pytest.fixture
def iris_pair(tenant_a):
    """acme/iris: v1 (logistic regression) in production, v2 (a stump) a candidate, with 150 served rows."""
    model, (production,) = af.iris_model(tenant_a)
    candidate = rf.create_version(model, stump())
    x, _ = rf.iris_data()
    records = serve(production, x, outputs=rf.iris_model().predict(x).tolist())
    model.refresh_from_db()
    return model, production, candidate, records


def run(client, path: str, body: dict | None = None) -> dict:
    queued = client.post(path, body or {}, format="json")
    assert queued.status_code == 202, queued.content
    replays.compute_replay(replay_id=queued.json()["id"])  # the worker's side
    return client.get(queued["Location"]).json()


def test_a_classifier_replay_reports_agreement_confusion_shift_and_accuracy_on_feedback(tenant_a, iris_pair):
    _, production, candidate, records = iris_pair
    x, y = rf.iris_data()
    # Feedback (the true class) for every other prediction.
    for i in range(0, 150, 2):
        af.feedback(production, records[i]["id"], label=int(y[i]))

    report_row = run(tenant_a.key_client(), url(2), {"rows": 500})

    assert (report_row["status"], report_row["error"]) == ("done", ""), report_row
    assert (report_row["version"], report_row["baseline_version"], report_row["rows_total"], report_row["rows_compared"]) == (
        2,
        1,
        150,
        150,
    )
    assert report_row["progress"] == 1.0
    old, new = rf.iris_model().predict(x), stump().predict(x)
    assert report_row["agreement"] == pytest.approx(np.mean(old == new))
    report = report_row["report"]
    confusion = report["agreement_detail"]["confusion"]
    assert confusion["labels"] == ["0", "1", "2"]
    assert confusion["counts"] == confusion_matrix(old, new, labels=[0, 1, 2]).tolist()
    shift = np.mean(np.abs(stump().predict_proba(x) - rf.iris_model().predict_proba(x)), axis=0)
    assert report["probability_shift"] == {
        label: pytest.approx(value) for label, value in zip(["0", "1", "2"], shift, strict=True)
    }
    assert report["failures"] == {
        "candidate_only": 0,
        "production_only": 0,
        "both": 0,
        "first": {"candidate_only": [], "production_only": []},
    }
    latency = report["latency"]
    assert latency["rows"] == 150 and latency["batches"] >= 1
    assert latency["production"]["total_ms"] > 0 and latency["candidate"]["total_ms"] > 0
    # Feedback: the rows with a truth, each version's accuracy, McNemar's exact test of the discordant pairs.
    labelled = np.arange(0, 150, 2)
    right_old, right_new = old[labelled] == y[labelled], new[labelled] == y[labelled]
    only_new, only_old = int(np.sum(right_new & ~right_old)), int(np.sum(right_old & ~right_new))
    feedback = report["feedback"]
    assert (feedback["metric"], feedback["rows"], feedback["test"]) == ("accuracy", 75, "mcnemar_exact")
    assert feedback["production"]["value"] == pytest.approx(right_old.mean())
    assert feedback["candidate"]["value"] == pytest.approx(right_new.mean())
    wilson = stats.binomtest(int(right_new.sum()), 75).proportion_ci(method="wilson")
    assert (feedback["candidate"]["low"], feedback["candidate"]["high"]) == (
        pytest.approx(wilson.low),
        pytest.approx(wilson.high),
    )
    assert (feedback["only_candidate_right"], feedback["only_production_right"]) == (only_new, only_old)
    assert feedback["difference"]["value"] == pytest.approx((only_new - only_old) / 75)
    assert feedback["difference"]["p_value"] == pytest.approx(stats.binomtest(only_new, only_new + only_old, 0.5).pvalue)
    assert feedback["difference"]["p_value"] < 0.05  # the stump is worse, and 75 labels show it


def test_a_regression_replay_reports_the_differences_and_the_paired_test_of_errors(tenant_a):
    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="prices")
    production = rf.create_version(model, rf.regression_model(), promote=True)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 3))
    truth = x @ np.array([1.5, -2.0, 0.5]) + 3.0 + rng.normal(scale=0.1, size=120)
    skewed = LinearRegression().fit(x, truth + 0.3 * x[:, 0])
    rf.create_version(model, skewed)
    old, new = rf.regression_model().predict(x), skewed.predict(x)
    records = serve(production, x, outputs=old.tolist())
    for i in range(60):
        af.feedback(production, records[i]["id"], value=float(truth[i]))

    row = run(tenant_a.key_client(), url(2, model="prices"))

    assert (row["status"], row["rows_compared"]) == ("done", 120), row
    detail = row["report"]["agreement_detail"]
    difference = new - old
    assert detail["mean"] == pytest.approx(difference.mean())
    p50, p95, p99 = np.quantile(np.abs(difference), [0.5, 0.95, 0.99])
    assert (detail["absolute"]["p50"], detail["absolute"]["p95"], detail["absolute"]["p99"]) == (
        pytest.approx(p50),
        pytest.approx(p95),
        pytest.approx(p99),
    )
    relative = np.abs(difference) / np.abs(old)
    assert detail["relative"]["p95"] == pytest.approx(np.quantile(relative, 0.95))
    assert row["agreement"] == pytest.approx(np.mean(np.abs(difference) <= 0.01 * np.abs(old)))
    assert sum(detail["histogram"]["counts"]) == 120
    assert row["report"]["probability_shift"] is None
    feedback = row["report"]["feedback"]
    errors_old, errors_new = np.abs(old[:60] - truth[:60]), np.abs(new[:60] - truth[:60])
    assert (feedback["metric"], feedback["rows"], feedback["test"]) == ("mae", 60, "paired_t")
    assert feedback["production"]["value"] == pytest.approx(errors_old.mean())
    assert feedback["candidate"]["rmse"] == pytest.approx(np.sqrt(np.mean(errors_new**2)))
    assert feedback["difference"]["p_value"] == pytest.approx(stats.ttest_rel(errors_new, errors_old).pvalue)
    low, high = stats.t.interval(0.95, df=59, loc=(errors_new - errors_old).mean(), scale=stats.sem(errors_new - errors_old))
    assert (feedback["difference"]["low"], feedback["difference"]["high"]) == (pytest.approx(low), pytest.approx(high))


def test_rows_the_candidate_refuses_are_its_failures_with_the_first_errors(tenant_a, iris_pair):
    model, production, _, records = iris_pair
    x, y = rf.iris_data()
    three = rf.create_version(model, DecisionTreeClassifier(random_state=0).fit(x[:, :3], y))  # v3 takes 3 features

    row = run(tenant_a.key_client(), url(three.number), {"rows": 40})

    assert (row["status"], row["rows_total"], row["rows_compared"], row["agreement"]) == ("done", 40, 0, None)
    failures = row["report"]["failures"]
    assert (failures["candidate_only"], failures["production_only"], failures["both"]) == (40, 0, 0)
    first = failures["first"]["candidate_only"]
    assert len(first) == replays.FIRST_FAILURES
    assert first[0]["code"] == "invalid_input"
    assert "Row 0 has 4 values; the model expects 3" in first[0]["message"]
    assert first[0]["prediction_id"] == records[-40]["id"]  # the newest 40, oldest first


def test_a_replay_counts_no_limit_and_touches_no_cache_usage_or_record(tenant_a, iris_pair):
    redis = get_redis()
    keys_before = set(redis.keys("*"))
    records_before = PredictionRecord.objects.count()

    row = run(tenant_a.key_client(), url(2))

    assert row["status"] == "done"
    assert set(redis.keys("*")) == keys_before
    assert PredictionRecord.objects.count() == records_before
    assert not UsageRollup.objects.exists()


def test_the_post_only_queues_the_replay_and_a_second_delivery_changes_nothing(
    tenant_a, iris_pair, django_capture_on_commit_callbacks
):
    client = tenant_a.key_client()

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(url(2), {"rows": 100, "window_hours": 2}, format="json")

    assert response.status_code == 202, response.content
    queued = response.json()
    assert response["Location"] == f"/api/v1/models/acme/iris/versions/2/replays/{queued['id']}"
    assert (queued["status"], queued["rows_requested"], queued["agreement"], queued["report"], queued["progress"]) == (
        "pending",
        100,
        None,
        {},
        None,
    )
    assert len(callbacks) == 1
    finished = replays.compute_replay(replay_id=queued["id"])
    assert (finished.status, finished.rows_total, finished.rows_done) == ("done", 100, 100)
    assert replays.compute_replay(replay_id=queued["id"]) is None
    assert Replay.objects.get(id=queued["id"]).finished_at == finished.finished_at
    listed = client.get(url(2)).json()["results"]
    assert [(r["id"], r["status"]) for r in listed] == [(queued["id"], "done")]
    assert [r["id"] for r in client.get("/api/v1/models/acme/iris/replays").json()["results"]] == [queued["id"]]


def test_a_second_replay_while_one_is_unfinished_is_409_naming_it(tenant_a, iris_pair):
    client = tenant_a.key_client()
    first = client.post(url(2), {}, format="json").json()

    again = client.post(url(2), {}, format="json")

    assert again.status_code == 409
    problem = again.json()
    assert (problem["code"], problem["replay_id"], problem["replay_status"]) == ("conflict", first["id"], "pending")
    replays.compute_replay(replay_id=first["id"])
    assert client.post(url(2), {}, format="json").status_code == 202


def test_a_window_with_no_traffic_is_400(tenant_a, iris_pair):
    PredictionRecord.objects.update(created_at=timezone.now() - timedelta(hours=5))

    response = tenant_a.key_client().post(url(2), {"window_hours": 2}, format="json")

    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "window_hours", "message": "no recorded traffic to replay"}]


@pytest.mark.parametrize(
    ("version", "body", "field", "message"),
    [
        (1, {}, "version", "is in production"),
        (2, {"rows": 0}, "rows", "Ensure this value is greater than or equal to 1."),
        (2, {"rows": 10**9}, "rows", "more than 20000"),
        (2, {"window_hours": 0}, "window_hours", "Ensure this value is greater than or equal to 1."),
        (2, {"rowz": 5}, "rowz", "Unknown field."),
    ],
    ids=["production-itself", "zero-rows", "too-many-rows", "zero-window", "unknown-field"],
)
def test_a_replay_that_cannot_be_made_is_400_naming_the_field(tenant_a, iris_pair, version, body, field, message):
    response = tenant_a.key_client().post(url(version), body, format="json")

    assert response.status_code == 400, response.content
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert [e["message"] for e in problem["errors"] if e.get("field") == field] == [message]
    assert not Replay.objects.exists()


def test_a_model_without_production_or_traffic_cannot_replay(tenant_a):
    model, versions = af.iris_model(tenant_a, versions=2, promote=False)
    client = tenant_a.key_client()

    assert client.post(url(2), {}, format="json").json()["errors"] == [{"field": "version", "message": "no production version"}]
    registry_services.set_stage(caller=Caller(user=tenant_a.user), version=versions[0], stage="production")
    assert client.post(url(2), {}, format="json").json()["errors"] == [
        {"field": "version", "message": "no recorded traffic to replay"}
    ]


def test_a_candidate_of_another_task_is_400(tenant_a, iris_pair):
    model, production, _, _ = iris_pair
    rf.create_version(model, rf.regression_model())

    response = tenant_a.key_client().post(url(3), {}, format="json")

    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "version", "message": "task differs from production's"}]


def test_a_viewer_reads_replays_but_cannot_start_one(tenant_a, iris_pair):
    Membership.objects.filter(organization=tenant_a.organization, user=tenant_a.user).update(role=Role.VIEWER)
    client = tenant_a.jwt_client()

    assert client.post(url(2), {}, format="json").status_code == 403
    assert client.get(url(2)).status_code == 200


def test_only_the_organizations_own_records_are_replayed(tenant_a, tenant_b, iris_pair):
    """Records are read by organization too: a record claiming acme's model but stored under
    another organization (a corrupt or forged row) is not replayed."""
    _, production, _, _ = iris_pair
    forged = af.record(production, at=timezone.now() - timedelta(minutes=5), **{"in": [[7.0, 3.2, 4.7, 1.4]], "out": [1]})
    forged["org"] = tenant_b.organization.id
    af.ingest([forged])

    row = run(tenant_a.key_client(), url(2), {"rows": 1000})

    assert row["rows_total"] == 150
