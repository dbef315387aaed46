"""The Compare tab and the model page's Replay button, through Django's test client, on replays
computed by the service from ingested records."""

from __future__ import annotations

import re

import numpy as np
import pytest

from analytics.models import Replay
from analytics.services import replays
from analytics.tests.test_replays import iris_pair, stump  # noqa: F401 (iris_pair is a fixture)
from registry.tests import factories as rf
from web_tests.conftest import member_of, signed_in

pytestmark = pytest.mark.django_db


def test_the_model_page_offers_a_replay_on_each_version_but_production(tenant_a, iris_pair):  # noqa: F811
    page = signed_in(tenant_a.user).get("/models/acme/iris/").content.decode()

    rows = dict(re.findall(r'<tr id="version-(\d+)">(.*?)</tr>', page, re.S))
    assert 'action="/models/acme/iris/compare/"' in rows["2"] and 'name="version" value="2"' in rows["2"]
    assert "/compare/" not in rows["1"]  # production is what the others are compared with
    assert 'href="/models/acme/iris/compare/"' in page  # the Compare tab


def test_the_replay_button_queues_a_replay_and_its_page_polls_until_done(tenant_a, iris_pair):  # noqa: F811
    client = signed_in(tenant_a.user)

    response = client.post("/models/acme/iris/compare/", {"version": "2"})

    replay = Replay.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/models/acme/iris/compare/{replay.id}/"
    assert (replay.version.number, replay.rows_requested, replay.status) == (2, replays.default_rows(), "pending")
    waiting = client.get(response["Location"]).content.decode()
    assert 'hx-trigger="every 2s"' in waiting and "Pending:" in waiting

    replays.compute_replay(replay_id=replay.id)
    done = client.get(response["Location"]).content.decode()

    x, _ = rf.iris_data()
    stump_agreement = np.mean(rf.iris_model().predict(x) == stump().predict(x))
    assert "hx-trigger" not in done
    assert f"{stump_agreement * 100:.1f}% agreement</strong> on 150 rows" in done
    assert 'id="replay-confusion"' in done and 'id="replay-latency"' in done and 'id="replay-shift"' in done
    assert "None of the replayed predictions has feedback." in done
    assert 'action="/models/acme/iris/versions/2/stage/"' in done  # promote from the report
    listed = client.get("/models/acme/iris/compare/").content.decode()
    assert f'<tr id="replay-{replay.id}">' in listed


def test_a_replay_of_the_production_version_is_refused_next_to_the_field(tenant_a, iris_pair):  # noqa: F811
    response = signed_in(tenant_a.user).post("/models/acme/iris/compare/", {"version": "1"})

    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()  # production is not offered
    assert not Replay.objects.exists()


def test_a_viewer_reads_the_compare_tab_without_the_form_and_cannot_post(tenant_a, iris_pair):  # noqa: F811
    client = signed_in(member_of(tenant_a.organization, "viewer"))

    page = client.get("/models/acme/iris/compare/")

    assert page.status_code == 200 and "Replay production's traffic on a version" not in page.content.decode()
    assert client.post("/models/acme/iris/compare/", {"version": "2"}).status_code == 403


def test_another_organizations_replay_page_is_404(tenant_a, tenant_b, iris_pair):  # noqa: F811
    client = signed_in(tenant_a.user)
    client.post("/models/acme/iris/compare/", {"version": "2"})
    replay = Replay.objects.get()

    assert signed_in(tenant_b.user).get(f"/models/acme/iris/compare/{replay.id}/").status_code == 404
    assert client.get("/models/acme/iris/compare/987654/").status_code == 404


def test_a_regression_replay_page_shows_the_differences_with_their_chart(tenant_a):
    from sklearn.linear_model import Ridge

    from accounts.principals import Caller
    from analytics.tests.test_replays import serve
    from registry import services as registry_services

    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="prices")
    production = rf.create_version(model, rf.regression_model(), promote=True)
    x = np.random.default_rng(2).normal(size=(50, 3))
    rf.create_version(model, Ridge(alpha=50.0).fit(x, rf.regression_model().predict(x)))
    serve(production, x, outputs=rf.regression_model().predict(x).tolist())
    client = signed_in(tenant_a.user)
    client.post("/models/acme/prices/compare/", {"version": "2", "rows": "50"})
    replay = replays.compute_replay(replay_id=Replay.objects.get().id)

    page = client.get(f"/models/acme/prices/compare/{replay.id}/").content.decode()

    absolute = replay.report["agreement_detail"]["absolute"]
    row = re.search(r"<th scope=\"row\">absolute difference</th>(.*?)</tr>", page, re.S).group(1)
    assert f"<td>{absolute['p95']:.4f}</td>" in row
    assert "Share of rows by difference (v2 minus production)" in page
    assert 'id="replay-confusion"' not in page and 'id="replay-shift"' not in page
