"""The replay gate of a promotion: `require_replay` on the stage call and the experiment promote."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier

from analytics.services import mirrors
from analytics.tests import factories as af
from analytics.tests import test_replays
from analytics.tests.test_replays import run, stump, url
from inference import records, routing
from inference.models import Experiment, Mirror
from registry.models import Release
from registry.tests import factories as rf

pytestmark = pytest.mark.django_db
iris_pair = test_replays.iris_pair  # the fixture: v1 in production with 150 served rows, v2 a stump

STAGE = "/api/v1/models/acme/iris/versions/{n}/stage"
AGREEMENT = float(np.mean(rf.iris_model().predict(rf.iris_data()[0]) == stump().predict(rf.iris_data()[0])))


def promote(client, number: int = 2, **require):
    body = {"stage": "production", "require_replay": require} if require else {"stage": "production"}
    return client.post(STAGE.format(n=number), body, format="json")


def production_number(model) -> int:
    model.refresh_from_db()
    return model.production_version.number


def test_a_promotion_without_a_replay_is_409_saying_so(tenant_a, iris_pair):
    model = iris_pair[0]

    response = promote(tenant_a.key_client(), min_agreement=0.5)

    assert response.status_code == 409
    problem = response.json()
    assert problem["code"] == "conflict"
    assert problem["detail"].startswith("Version 2 has no replay against production (version 1) yet")
    assert "POST /api/v1/models/acme/iris/versions/2/replays" in problem["detail"]
    assert problem["replay"] is None
    assert production_number(model) == 1


def test_a_replay_that_falls_short_is_409_quoting_it(tenant_a, iris_pair):
    model = iris_pair[0]
    client = tenant_a.key_client()
    replay = run(client, url(2), {"rows": 150})

    response = promote(client, min_agreement=0.98)

    assert response.status_code == 409
    problem = response.json()
    assert problem["detail"] == (
        f"Replay #{replay['id']} of version 2 against production (version 1): 150 rows compared, 0 failed on version 2, "
        f"{AGREEMENT:.2%} agreement counting failures as disagreeing, below the 98.00% the promotion asks for."
    )
    quoted = problem["replay"]
    assert (quoted["kind"], quoted["id"], quoted["rows_compared"], quoted["rows_failed"]) == ("replay", replay["id"], 150, 0)
    assert quoted["agreement"] == pytest.approx(AGREEMENT)
    assert quoted["gate_agreement"] == pytest.approx(AGREEMENT)
    assert quoted["url"] == f"/api/v1/models/acme/iris/versions/2/replays/{replay['id']}"
    assert (quoted["min_agreement"], quoted["min_rows"]) == (0.98, 1)
    assert production_number(model) == 1
    assert not Release.objects.filter(registered_model=model, to_version__number=2).exists()


def test_a_replay_that_agrees_enough_lets_the_promotion_through(tenant_a, iris_pair):
    model = iris_pair[0]
    client = tenant_a.key_client()
    run(client, url(2), {"rows": 150})

    too_few = promote(client, min_agreement=0.5, min_rows=151)
    response = promote(client, min_agreement=round(AGREEMENT - 0.01, 4), min_rows=150)

    assert too_few.status_code == 409
    assert too_few.json()["detail"].endswith("the promotion asks for at least 151 rows.")
    assert response.status_code == 200, response.content
    assert production_number(model) == 2


def test_rows_the_candidate_failed_on_count_as_disagreeing(tenant_a, iris_pair):
    """A candidate that refuses every row agrees on none of them, whatever its agreement elsewhere."""
    model = iris_pair[0]
    x, y = rf.iris_data()
    rf.create_version(model, DecisionTreeClassifier(random_state=0).fit(x[:, :3], y))  # v3 takes 3 features
    client = tenant_a.key_client()
    run(client, url(3), {"rows": 20})

    response = promote(client, 3, min_agreement=0.5)
    problem = response.json()

    assert response.status_code == 409
    assert (problem["replay"]["rows_compared"], problem["replay"]["rows_failed"], problem["replay"]["gate_agreement"]) == (
        0,
        20,
        0.0,
    )
    assert problem["replay"]["agreement"] is None


def test_the_newest_evidence_is_a_running_mirror_when_it_reported_last(tenant_a, iris_pair):
    model = iris_pair[0]
    client = tenant_a.key_client()
    run(client, url(2), {"rows": 150})  # 150 rows at the stump's agreement
    mirror_id = client.post("/api/v1/models/acme/iris/mirror", {"version": 2, "fraction": 0.5}, format="json").json()["id"]
    Mirror.objects.update(fraction=1.0)
    routing.clear_routes()
    x, _ = rf.iris_data()
    setosa = x[:10]  # where the stump and production agree
    for row in setosa:
        assert client.post("/api/v1/models/acme/iris/predict", {"inputs": [row.tolist()]}, format="json").status_code == 200
    records.drain_stream()
    mirrors.mirror_once(mirror_id=mirror_id)

    response = promote(client, min_agreement=0.99)

    assert response.status_code == 200, response.content
    assert production_number(model) == 2
    assert Release.objects.get(registered_model=model, to_version__number=2).kind == "promote"


def test_an_experiment_promotion_with_a_gate_that_fails_changes_nothing(tenant_a, iris_pair):
    model = iris_pair[0]
    client = tenant_a.key_client()
    run(client, url(2), {"rows": 150})
    experiment = client.post(
        "/api/v1/models/acme/iris/experiments",
        {"name": "stump", "variants": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]},
        format="json",
    ).json()

    refused = client.post(
        f"/api/v1/experiments/{experiment['id']}/promote",
        {"version": 2, "require_replay": {"min_agreement": 0.99}},
        format="json",
    )
    passed = client.post(
        f"/api/v1/experiments/{experiment['id']}/promote", {"version": 2, "require_replay": {"min_agreement": 0.5}}, format="json"
    )

    assert refused.status_code == 409
    assert refused.json()["replay"]["kind"] == "replay"
    assert passed.status_code == 200, passed.content
    assert passed.json()["release"]["kind"] == "experiment"
    assert Experiment.objects.get(id=experiment["id"]).status == "stopped"
    assert production_number(model) == 2


def test_a_model_without_production_cannot_gate_a_promotion(tenant_a):
    model, _ = af.iris_model(tenant_a, versions=2, promote=False)

    response = promote(tenant_a.key_client(), 1, min_agreement=0.9)

    assert response.status_code == 409
    assert response.json()["detail"].startswith("acme/iris has no production version")
    model.refresh_from_db()
    assert model.production_version is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"stage": "staging", "require_replay": {"min_agreement": 0.9}}, "require_replay"),
        ({"stage": "production", "require_replay": {"min_agreement": 1.5}}, "require_replay.min_agreement"),
        ({"stage": "production", "require_replay": {}}, "require_replay.min_agreement"),
        ({"stage": "production", "require_replay": {"min_agreement": 0.9, "min_rows": 0}}, "require_replay.min_rows"),
        ({"stage": "production", "require_replay": {"min_agreement": 0.9, "rows": 5}}, "require_replay.rows"),
    ],
    ids=["not-a-promotion", "above-one", "empty", "zero-rows", "unknown-field"],
)
def test_a_bad_require_replay_is_400_naming_the_field(tenant_a, iris_pair, body, field):
    response = tenant_a.key_client().post(STAGE.format(n=2), body, format="json")

    assert response.status_code == 400, response.content
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert production_number(iris_pair[0]) == 1
