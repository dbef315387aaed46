"""`modelhost` against a live platform: login, deploy, predict, promote and roll back, batch, errors."""

from __future__ import annotations

import json
import re
import stat
import subprocess

import numpy as np
import pandas as pd
import pytest

from modelhost import Client
from registry.tests import factories as f
from registry.tests import malicious

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

ROWS = [f.IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]


def iris_file(tmp_path, estimator=None, name="model.joblib"):
    path = tmp_path / name
    path.write_bytes(f.joblib_bytes(estimator if estimator is not None else f.iris_model()))
    return path


def stored_model(tenant, name="iris", estimators=None, promote_first=True):
    """A model with versions stored directly (no upload check): for tests about what comes after an upload.

    Without estimators, one iris model fitted on a DataFrame.
    """
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant.user), organization=tenant.organization, name=name)
    if estimators is None:
        estimators = (f.iris_frame_model(),)
    for index, estimator in enumerate(estimators):
        f.create_version(model, estimator, promote=promote_first and index == 0)
    return model


# --- login and whoami --------------------------------------------------------------------


def test_login_with_an_api_key_stores_it_for_the_owner_only(run, tenant, live_platform):
    result = run("login", "--url", live_platform.url, "--api-key", tenant.api_key, "--json")
    assert result.code == 0, result.stderr
    assert result.json()["org"] == tenant.organization.slug
    path = run.config / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": live_platform.url, "api_key": tenant.api_key, "org": tenant.organization.slug}

    me = run("whoami", "--json")
    assert me.code == 0, me.stderr
    assert me.json()["organizations"] == [{"slug": tenant.organization.slug, "role": None}]
    assert me.json()["api_key"]["scopes"] == ["admin", "predict", "read", "write"]


def test_login_with_email_and_password_stores_a_jwt_pair_that_refreshes(run, tenant, live_platform, settings, monkeypatch):
    from accounts.tests.factories import PASSWORD

    # The web process checks passwords with the platform's own hashers, not the suite's fast MD5.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    tenant.user.set_password(PASSWORD)
    tenant.user.save()
    result = run("login", "--url", live_platform.url, "--email", tenant.user.email, input=PASSWORD + "\n")
    assert result.code == 0, result.stderr
    assert f"as {tenant.user.email}" in result.stdout
    stored = json.loads((run.config / "credentials.json").read_text())
    assert set(stored) == {"url", "email", "access", "refresh", "org"}
    assert run("whoami", "--json").json()["user"]["email"] == tenant.user.email

    # A token near its expiry is exchanged before the call, and the new pair replaces the old.
    import modelhost.client

    monkeypatch.setenv("MODELHOST_CONFIG_DIR", str(run.config))
    monkeypatch.setattr(modelhost.client, "refresh_margin_seconds", 10**9)
    with modelhost.Client() as client:
        assert client.whoami()["user"]["email"] == tenant.user.email
    refreshed = json.loads((run.config / "credentials.json").read_text())
    assert refreshed["access"] != stored["access"] and refreshed["refresh"] != stored["refresh"]
    assert stat.S_IMODE((run.config / "credentials.json").stat().st_mode) == 0o600


def test_a_wrong_api_key_exits_3_quoting_the_platform_and_stores_nothing(run, tenant, live_platform):
    result = run("login", "--url", live_platform.url, "--api-key", "mh_wrong_key")
    assert result.code == 3
    assert "Error:" in result.stderr and "(401 " in result.stderr
    assert not (run.config / "credentials.json").exists()

    by_env = run("models", "--json", env={"MODELHOST_URL": live_platform.url, "MODELHOST_API_KEY": tenant.api_key + "x"})
    assert by_env.code == 3
    assert by_env.error_json()["status"] == 401
    assert by_env.error_json()["problem"]["code"] == "not_authenticated"


def test_without_credentials_a_command_exits_3_saying_how_to_log_in(run):
    result = run("models")
    assert result.code == 3
    assert "run `modelhost login`" in result.stderr


# --- deploy ------------------------------------------------------------------------------


def test_deploy_with_promote_creates_the_model_and_prints_a_working_curl_line(run, logged_in, tmp_path):
    example = tmp_path / "example.json"
    example.write_text(json.dumps([f.IRIS_ROW]))
    result = run("deploy", iris_file(tmp_path), "--name", "iris", "--example", example, "--promote", "--json")
    assert result.code == 0, result.stderr
    answer = result.json()
    slug = logged_in.organization.slug
    assert (answer["model"], answer["created"], answer["promoted"]) == (f"{slug}/iris", True, True)
    assert (answer["version"]["number"], answer["version"]["stage"]) == (1, "production")
    assert answer["version"]["estimator_class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert answer["version"]["input_example"] == [f.IRIS_ROW]
    url = json.loads((run.config / "credentials.json").read_text())["url"]
    assert answer["endpoint"] == f"{url}/api/v1/models/{slug}/iris/predict"

    curl = subprocess.run(
        ["bash", "-c", answer["curl"]],
        env={"MODELHOST_API_KEY": logged_in.api_key, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(curl.stdout)["predictions"] == f.iris_model().predict(np.array([f.IRIS_ROW])).tolist()

    # For people: the upload's progress on stderr, the verdict, the endpoint and the curl line on stdout.
    again = run("deploy", iris_file(tmp_path), "--name", "iris", "--promote")
    assert again.code == 0, again.stderr
    assert "Uploading model.joblib" in again.stderr and "Created the model" not in again.stderr
    assert (
        f"Version 2 of {slug}/iris: LogisticRegression (classification, 4 features, joblib), checked and accepted."
        in again.stdout
    )
    assert "Version 2 is production." in again.stdout
    assert f"Endpoint: {url}/api/v1/models/{slug}/iris/predict" in again.stdout
    assert f'curl -s {url}/api/v1/models/{slug}/iris/predict -H "Authorization: Bearer $MODELHOST_API_KEY"' in again.stdout
    assert [(v["number"], v["stage"]) for v in run("versions", "iris", "--json").json()] == [(2, "production"), (1, "archived")]


def test_a_refused_model_file_exits_6_naming_the_refused_global(run, logged_in, tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.joblib"
    hostile.write_bytes(malicious.joblib_bytes(malicious.pipeline_with_payload(marker)))
    result = run("deploy", hostile, "--name", "iris")
    assert result.code == 6
    assert malicious.OS_SYSTEM in result.stderr
    assert "(422 unsafe_artifact)" in result.stderr
    assert not marker.exists()

    assert run("versions", "iris", "--json").json() == []


# --- predict -----------------------------------------------------------------------------


def test_predict_inline_rows_and_a_small_csv_file(run, logged_in, tmp_path):
    stored_model(logged_in)
    frame = pd.DataFrame(ROWS, columns=f.IRIS_FEATURES)
    expected = f.iris_frame_model().predict(frame).tolist()
    inline = run("predict", "iris", "--data", json.dumps(ROWS), "--probabilities", "--json")
    assert inline.code == 0, inline.stderr
    assert inline.json()["predictions"] == expected
    np.testing.assert_allclose(inline.json()["probabilities"], f.iris_frame_model().predict_proba(frame))

    csv_file = tmp_path / "rows.csv"
    frame.to_csv(csv_file, index=False)
    from_file = run("predict", "iris", "--file", csv_file, "--json")
    assert from_file.code == 0, from_file.stderr
    assert from_file.json()["predictions"] == expected

    people = run("predict", "iris", "--data", json.dumps(ROWS))
    assert people.code == 0 and f"{logged_in.organization.slug}/iris version 1" in people.stdout


@pytest.mark.parametrize(
    "args, code, says",
    [
        pytest.param(["predict", "no-such-model", "--data", "[[1,2,3,4]]"], 4, "(404 not_found)", id="unknown-model"),
        pytest.param(
            ["predict", "iris", "--data", '[[5.1, "wide", 1.4, 0.2]]'],
            5,
            "row 0, column sepal_width: expected a number, got the string 'wide'",
            id="bad-row",
        ),
        pytest.param(["predict", "iris", "--data", "[[5.1"], 2, "--data is not valid JSON", id="bad-json"),
        pytest.param(["predict", "iris"], 2, "exactly one of --data and --file", id="no-rows"),
        pytest.param(["promote", "iris", "7"], 4, "(404 not_found)", id="unknown-version"),
        pytest.param(
            ["rollback", "iris"],
            5,
            "no previous production version to roll back to. (409 conflict)",
            id="nothing-to-roll-back-to",
        ),
    ],
)
def test_errors_end_with_their_documented_exit_code(run, logged_in, args, code, says):
    stored_model(logged_in)
    result = run(*args)
    assert result.code == code, result.stderr
    assert says in result.stderr


def test_errors_in_json_carry_the_problem_detail(run, logged_in):
    stored_model(logged_in)
    result = run("predict", "iris", "--data", '[[5.1, "wide", 1.4, 0.2]]', "--json")
    assert result.code == 5
    problem = result.error_json()["problem"]
    assert problem["code"] == "invalid_input"
    assert problem["errors"][0]["row"] == 0 and problem["errors"][0]["column"] == "sepal_width"
    assert result.stdout == ""


# --- promote and rollback ----------------------------------------------------------------


def test_promote_then_rollback_moves_production_and_records_releases(run, logged_in):
    stored_model(logged_in, estimators=(f.iris_model(), f.iris_model()))
    promoted = run("promote", "iris", "2", "--reason", "better recall", "--json")
    assert promoted.code == 0, promoted.stderr
    assert promoted.json()["stage"] == "production"
    assert run("models", "--json").json()[0]["production_version"] == 2

    rolled = run("rollback", "iris", "--json")
    assert rolled.code == 0, rolled.stderr
    assert (rolled.json()["from_version"], rolled.json()["to_version"], rolled.json()["kind"]) == (2, 1, "rollback")
    assert run("predict", "iris", "--data", json.dumps(ROWS), "--json").json()["version"] == 1
    kinds = [(r["kind"], r["to_version"]) for r in run("releases", "iris", "--json").json()]
    assert kinds[0] == ("rollback", 1) and ("promote", 2) in kinds
    assert "better recall" in run("releases", "iris").stdout


def test_promote_with_min_agreement_needs_a_replay_that_agrees_enough(run, logged_in):
    stored_model(logged_in, estimators=(f.iris_model(), f.iris_model()))

    refused = run("promote", "iris", "2", "--min-agreement", "0.98", "--json")
    out_of_range = run("promote", "iris", "2", "--min-agreement", "1.5")

    assert refused.code == 5, refused.stderr
    problem = refused.error_json()["problem"]
    assert (problem["code"], problem["replay"]) == ("conflict", None)
    assert problem["detail"].startswith("Version 2 has no replay against production (version 1) yet")
    assert out_of_range.code == 2 and "1.5 is not in the range 0<=x<=1" in out_of_range.stderr
    assert run("models", "--json").json()[0]["production_version"] == 1


# --- batch -------------------------------------------------------------------------------


def test_a_batch_file_waits_with_progress_and_downloads_the_result(run, logged_in, live_platform, tmp_path):
    live_platform.ensure_worker()
    stored_model(logged_in)
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        np.round(rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(3000, 4)), 2), columns=f.IRIS_FEATURES
    )
    csv_file = tmp_path / "rows.csv"
    rows.to_csv(csv_file, index=False)
    output = tmp_path / "scored.csv"
    result = run("predict", "iris", "--file", csv_file, "--batch", "--wait", "--output", output)
    assert result.code == 0, result.stderr + live_platform.workers.logs()
    assert "Batch job" in result.stderr and "3000/3000 rows" in result.stderr
    scored = pd.read_csv(output)
    assert len(scored) == 3000
    assert scored["prediction"].tolist() == f.iris_frame_model().predict(rows).tolist()
    assert f"rows written to {output}" in result.stdout


# --- usage and drift ---------------------------------------------------------------------


def test_usage_and_drift_answer_in_json(run, logged_in):
    stored_model(logged_in)
    usage = run("usage", "iris", "--granularity", "day", "--json")
    assert usage.code == 0, usage.stderr
    assert (usage.json()["model"], usage.json()["granularity"], usage.json()["buckets"]) == (
        f"{logged_in.organization.slug}/iris",
        "day",
        [],
    )
    drift = run("drift", "iris", "--json")
    assert drift.code == 0, drift.stderr
    assert drift.json() == []
    assert "No drift reports yet" in run("drift", "iris").stdout


def test_drift_run_waits_for_the_workers_verdict_and_shows_each_feature(run, logged_in, live_platform):
    from analytics.tests.test_drift_reports import serve, store_reference

    live_platform.ensure_worker()
    model = stored_model(logged_in, estimators=(f.iris_model(),))
    version = model.versions.get(number=1)
    x, _ = f.iris_data()
    store_reference(version, pd.DataFrame(x, columns=["f0", "f1", "f2", "f3"]))
    serve(version, x[:100] + np.array([1.5, 0.8, 2.0, 0.9]), outputs=[2] * 100)  # every feature shifted

    result = run("drift", "iris", "--run", "--window-hours", "2", "--json")

    assert result.code == 0, result.stderr + live_platform.workers.logs()
    report = result.json()
    assert (
        report["status"],
        report["is_drift"],
        report["drifted_features"],
        report["current_rows"],
        report["reference_rows"],
    ) == ("done", True, 4, 100, 150)
    assert [(feature["name"], feature["test"], feature["drifted"]) for feature in report["features"]] == [
        (f"f{i}", "ks", True) for i in range(4)
    ]

    people = run("drift", "iris", "--run", "--window-hours", "2")
    assert people.code == 0, people.stderr
    assert f"Drift report {report['id'] + 1}: DRIFT (4/4 features drifted; 100 rows served vs 150 reference)" in people.stdout
    assert [line.split()[:2] for line in people.stdout.splitlines() if re.match(r"f\d ", line)] == [
        [f"f{i}", "ks"] for i in range(4)
    ]
    listed = run("drift", "iris", "--json").json()
    assert [(r["id"], r["status"], r["is_drift"]) for r in listed] == [
        (report["id"] + 1, "done", True),
        (report["id"], "done", True),
    ]


# --- replay ------------------------------------------------------------------------------


def stump():
    """A one-split tree: it agrees with the logistic regression on setosa and little else."""
    from sklearn.tree import DecisionTreeClassifier

    x, y = f.iris_data()
    return DecisionTreeClassifier(max_depth=1, random_state=0).fit(x, y)


@pytest.fixture
def served_iris(logged_in):
    """iris: v1 (logistic regression) in production, which served the 150 iris rows; v2 a stump."""
    from analytics.tests.test_drift_reports import serve

    model = stored_model(logged_in, estimators=(f.iris_model(), stump()))
    x, _ = f.iris_data()
    serve(model.versions.get(number=1), x, outputs=f.iris_model().predict(x).tolist())
    return x


def test_replay_waits_with_progress_and_reports_the_agreement(run, served_iris, live_platform):
    live_platform.ensure_worker()
    newest = served_iris[50:]  # --last 100: production's newest 100 rows
    expected = float(np.mean(f.iris_model().predict(newest) == stump().predict(newest)))

    result = run("replay", "iris", "2", "--last", "100", "--wait", "--json")

    assert result.code == 0, result.stderr + live_platform.workers.logs()
    replay = result.json()
    assert (replay["status"], replay["version"], replay["baseline_version"], replay["rows_total"], replay["rows_done"]) == (
        "done",
        2,
        1,
        100,
        100,
    )
    assert replay["agreement"] == pytest.approx(expected)
    report = replay["report"]
    assert (report["task"], report["rows_compared"], report["failures"]["candidate_only"]) == ("classification", 100, 0)
    assert report["agreement_detail"]["agreeing"] == round(expected * 100)

    people = run("replay", "iris", "2", "--last", "100", "--wait")
    assert people.code == 0, people.stderr
    assert "Replay" in people.stderr and "100/100 rows" in people.stderr  # the progress bar
    assert "version 2 against production (version 1) on 100 rows served, 100 compared." in people.stdout
    assert f"Agreement: {expected * 100:.1f}% ({round(expected * 100)} rows give the same label)." in people.stdout
    assert "Failed rows: 0 on version 2 only, 0 on production only, 0 on both." in people.stdout


def test_replay_without_wait_answers_the_queued_replay_and_replay_status_follows_it(run, logged_in, served_iris, live_platform):
    live_platform.ensure_worker()
    queued = run("replay", "iris", "2", "--json")
    assert queued.code == 0, queued.stderr
    assert (queued.json()["status"], queued.json()["rows_requested"]) == ("pending", 1000)
    replay_id = queued.json()["id"]

    status = run("replay-status", "iris", "2", str(replay_id), "--wait")

    assert status.code == 0, status.stderr + live_platform.workers.logs()
    assert f"Replay {replay_id} of " in status.stdout and "on 150 rows served, 150 compared." in status.stdout

    # The same from Python.
    with Client(live_platform.url, api_key=logged_in.api_key) as client:
        assert client.replay_of("iris", 2, replay_id)["report"]["rows_compared"] == 150
        replay = client.replay("iris", 2, last=30, wait=True)
        assert (replay["status"], replay["rows_total"], replay["report"]["rows_compared"]) == ("done", 30, 30)
        assert [r["id"] for r in client.replays("iris")] == [replay["id"], replay_id]
        assert [r["id"] for r in client.replays("iris", version=2)] == [replay["id"], replay_id]


@pytest.mark.parametrize(
    "args, code, says",
    [
        pytest.param(["replay", "iris", "7"], 4, "(404 not_found)", id="unknown-version"),
        pytest.param(["replay", "iris", "2", "--window-hours", "100000"], 5, "window_hours", id="window-too-long"),
        pytest.param(["replay", "iris", "2", "--last", "0"], 2, "--last", id="no-rows"),
        pytest.param(["replay-status", "iris", "2", "999999"], 4, "(404 not_found)", id="unknown-replay"),
    ],
)
def test_replay_errors_end_with_their_documented_exit_code(run, served_iris, args, code, says):
    result = run(*args)
    assert result.code == code, result.stderr
    assert says in result.stderr
