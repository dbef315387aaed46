"""The Compare tab's live mirror: start, report, promote through the gate, stop, through Django's
test client, with the worker's side run in process on real predictions."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.services import mirrors
from analytics.tests import test_replays
from analytics.tests.test_mirrors import serve_all
from analytics.tests.test_replays import stump
from inference import routing
from inference.models import Mirror
from registry.tests import factories as rf
from web_tests.conftest import member_of, signed_in

pytestmark = pytest.mark.django_db
iris_pair = test_replays.iris_pair  # the fixture: v1 in production with 150 served rows, v2 a stump
PAGE = "/models/acme/iris/compare/"


def test_an_owner_starts_a_mirror_sees_its_report_and_stops_it(tenant_a, iris_pair):
    client = signed_in(tenant_a.user)
    assert "No mirror yet." in client.get(PAGE).content.decode()

    started = client.post(f"{PAGE}mirror/", {"mirror-version": "2", "mirror-percent": "50", "mirror-max_rows_per_hour": ""})

    assert started.status_code == 302 and started["Location"] == PAGE
    mirror = Mirror.objects.get()
    assert (mirror.version.number, mirror.fraction, mirror.max_rows_per_hour, mirror.status) == (2, 0.5, 1000, "running")
    page = client.get(PAGE).content.decode()
    assert "Mirroring</span> 50% of production" in page and 'id="mirror-report-empty"' in page
    Mirror.objects.update(fraction=1.0)
    routing.clear_routes()
    x, _ = rf.iris_data()
    serve_all(tenant_a.key_client(), x[:30].tolist())
    mirrors.mirror_once(mirror_id=mirror.id)

    page = client.get(PAGE).content.decode()

    agreement = np.mean(rf.iris_model().predict(x[:30]) == stump().predict(x[:30]))
    assert f'<strong id="mirror-agreement">{agreement * 100:.1f}%</strong> on 30 rows' in page
    assert 'id="mirror-confusion"' in page and 'id="mirror-promote"' in page
    stopped = client.post(f"{PAGE}mirror/stop/")
    assert stopped.status_code == 302
    assert Mirror.objects.get().status == "stopped"
    page = client.get(PAGE).content.decode()
    assert "Stopped</span> mirror of version 2" in page and 'id="mirror-agreement"' in page  # the report stays


def test_a_fraction_over_half_is_refused_next_to_the_field(tenant_a, iris_pair):
    response = signed_in(tenant_a.user).post(f"{PAGE}mirror/", {"mirror-version": "2", "mirror-percent": "75"})

    assert response.status_code == 400
    assert "Ensure this value is less than or equal to 50.0." in response.content.decode()
    assert not Mirror.objects.exists()


def test_a_member_sees_no_mirror_form_and_cannot_start_or_stop(tenant_a, iris_pair):
    client = signed_in(member_of(tenant_a.organization, "member"))

    page = client.get(PAGE).content.decode()

    assert 'id="mirror-start"' not in page
    assert client.post(f"{PAGE}mirror/", {"mirror-version": "2", "mirror-percent": "10"}).status_code == 403
    assert client.post(f"{PAGE}mirror/stop/").status_code == 403
    assert not Mirror.objects.exists()


def test_another_organization_gets_404_on_the_mirror_pages(tenant_a, tenant_b, iris_pair):
    intruder = signed_in(tenant_b.user)

    assert intruder.get(PAGE).status_code == 404
    assert intruder.post(f"{PAGE}mirror/", {"mirror-version": "2", "mirror-percent": "10"}).status_code == 404
    assert intruder.post(f"{PAGE}mirror/stop/").status_code == 404


def test_the_promote_button_refuses_through_the_gate_and_quotes_the_replay(tenant_a, iris_pair):
    client = signed_in(tenant_a.user)
    client.post(PAGE, {"version": "2"})
    from analytics.models import Replay
    from analytics.services import replays

    replay = Replay.objects.get()
    replays.compute_replay(replay_id=replay.id)
    back = f"{PAGE}{replay.id}/"
    assert 'name="min_agreement"' in client.get(back).content.decode()

    refused = client.post(
        "/models/acme/iris/versions/2/stage/",
        {"stage": "production", "min_agreement": "0.98", "back": back, "confirmed": "yes"},
        follow=True,
    )
    passed = client.post(
        "/models/acme/iris/versions/2/stage/", {"stage": "production", "min_agreement": "0.3", "back": back, "confirmed": "yes"}
    )

    assert refused.redirect_chain == [(back, 302)]
    assert f"Replay #{replay.id} of version 2 against production (version 1): 150 rows compared" in refused.content.decode()
    assert passed.status_code == 302 and passed["Location"] == "/models/acme/iris/"
    iris_pair[0].refresh_from_db()
    assert iris_pair[0].production_version.number == 2


@pytest.mark.parametrize("value", ["lots", "1.5", "-0.1", "nan"])
def test_a_promote_button_with_a_bad_agreement_changes_nothing(tenant_a, iris_pair, value):
    client = signed_in(tenant_a.user)

    response = client.post(
        "/models/acme/iris/versions/2/stage/", {"stage": "production", "min_agreement": value, "confirmed": "yes"}, follow=True
    )

    assert "The agreement to require is a share from 0 to 1." in response.content.decode()
    iris_pair[0].refresh_from_db()
    assert iris_pair[0].production_version.number == 1
