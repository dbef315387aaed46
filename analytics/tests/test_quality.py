"""Live accuracy and MAE/RMSE per version per day, from feedback joined to predictions."""

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from scipy import stats

from accounts.principals import Caller
from analytics.models import QualityRollup
from analytics.services import quality, usage
from analytics.tests import factories as af
from registry import services as registry_services
from registry.tests import factories as rf

pytestmark = pytest.mark.django_db


def test_accuracy_from_feedback_sent_through_the_api(tenant_a):
    af.iris_model(tenant_a)
    client = tenant_a.key_client()
    x, y = rf.iris_data()
    ids = []
    for row in x[::10]:
        ids.append(client.post("/api/v1/models/acme/iris/predict", {"inputs": [row.tolist()]}, format="json").json())
    truths = y[::10]
    for answer, truth in zip(ids, truths, strict=True):
        response = client.post(f"/api/v1/predictions/{answer['id']}/feedback", {"label": int(truth)}, format="json")
        assert response.status_code == 201, response.content
    correct = sum(answer["predictions"][0] == truth for answer, truth in zip(ids, truths, strict=True))
    usage.roll_up_usage()
    quality.roll_up_quality()

    body = client.get("/api/v1/models/acme/iris/quality").json()

    (day,) = body["days"]
    assert day["day"] == timezone.now().date().isoformat()
    assert (day["version"], day["feedback"], day["correct"], day["requests"]) == (1, 15, correct, 15)
    wilson = stats.binomtest(int(correct), 15).proportion_ci(0.95, method="wilson")
    assert day["accuracy"] == pytest.approx(correct / 15)
    assert (day["accuracy_low"], day["accuracy_high"]) == (pytest.approx(wilson.low), pytest.approx(wilson.high))


def test_quality_is_per_version_per_day_and_late_feedback_corrects_it(tenant_a):
    _model, (v1, v2) = af.iris_model(tenant_a, versions=2)
    yesterday = usage.day_floor(timezone.now() - timedelta(days=1)) + timedelta(hours=12)
    today = usage.day_floor(timezone.now()) + timedelta(minutes=1)
    first = af.ingest([af.record(v1, at=yesterday, out=[i % 2]) for i in range(10)])
    second = af.ingest([af.record(v2, at=today, out=[1]) for i in range(4)])
    wide = af.ingest([af.record(v1, at=yesterday, out=[0, 1], rows=2)])
    for record in first:
        af.feedback(v1, record["id"], label=0)  # right for the 5 even ones
    af.feedback(v2, second[0]["id"], label=1)
    af.feedback(v1, wide[0]["id"], label=0)  # two rows, one truth: not counted

    quality.roll_up_quality()
    rows = {(r.version_id, r.day): r for r in QualityRollup.objects.all()}
    assert (rows[(v1.id, yesterday.date())].feedback, rows[(v1.id, yesterday.date())].correct) == (10, 5)
    assert (rows[(v2.id, today.date())].feedback, rows[(v2.id, today.date())].correct) == (1, 1)

    af.feedback(v2, second[1]["id"], label=2)  # arrives later, wrong
    quality.roll_up_quality()
    quality.roll_up_quality()  # idempotent
    assert QualityRollup.objects.get(version=v2).feedback == 2
    assert QualityRollup.objects.get(version=v2).correct == 1
    assert QualityRollup.objects.count() == 2


def test_regression_quality_is_mae_and_rmse(tenant_a):
    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="reg")
    version = rf.create_version(model, rf.regression_model(), promote=True)
    rng = np.random.default_rng(2)
    predicted, truth = rng.normal(5, 2, size=40), rng.normal(5, 2, size=40)
    at = timezone.now() - timedelta(minutes=5)
    records = af.ingest([af.record(version, at=at, out=[float(p)], **{"in": [[0.1, 0.2, 0.3]]}) for p in predicted])
    for record, value in zip(records, truth, strict=True):
        af.feedback(version, record["id"], value=float(value))
    quality.roll_up_quality()

    (day,) = tenant_a.key_client().get("/api/v1/models/acme/reg/quality").json()["days"]

    assert day["metric"] == "mae_rmse"
    assert day["mae"] == pytest.approx(np.mean(np.abs(predicted - truth)))
    assert day["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - truth) ** 2)))


def test_quality_api_rejects_a_reversed_range(tenant_a):
    af.iris_model(tenant_a)
    response = tenant_a.key_client().get("/api/v1/models/acme/iris/quality?start=2026-02-01&end=2026-01-01")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "start"
