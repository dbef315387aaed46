"""`make run`'s embedded default is the real platform: the README's tour, word for word, and SQLite under load.

One platform, started by scripts/run.sh as `make run` starts it (a SQLite file and the embedded
Redis, in a fresh VAR_DIR), serves this module's tests; the tour runs first, on the fresh database.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from platform_site.tests.make_run import ROOT, running_make_run
from platform_site.tests.readme_tour import commands, run, tour_blocks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    with running_make_run(folder=tmp_path_factory.mktemp("make-run")) as started:
        yield started


def split_http(raw: str) -> tuple[int, dict[str, str], str]:
    """curl -i's output: status, headers (lower-case names), body."""
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.splitlines()
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_readme_tour_runs_as_written_under_make_run(platform, tmp_path):
    blocks = tour_blocks()
    # The first block only sets MH_KEY (from make run's output) and MH (make run's address):
    # the test sets both from the platform it started.
    assert [command.split("=")[0] for command, _ in commands(blocks[0])] == ["export MH_KEY", "export MH"]
    env = {**os.environ, "MH": platform.base_url, "MH_KEY": platform.api_key}
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the tour runs from a clone's top folder
    answers = []

    def tour(block_index: int):
        for command, shown in commands(blocks[block_index]):
            answers.append((command, shown, run(command, env=env, cwd=tmp_path)))
        return answers[-len(commands(blocks[block_index])) :]

    # Predict with the demo model: the answer the README shows, probabilities to two places.
    [(predict, shown, output)] = tour(1)
    answer = json.loads(output)
    assert re.fullmatch(r"prd_01[0-9A-Z]{24}", answer["id"])
    expected = json.loads(shown.replace('"prd_01..."', '"an id"'))  # the README elides the id
    assert set(answer) == set(expected)
    answer["probabilities"] = [[round(p, 2) for p in row] for row in answer["probabilities"]]
    measured = ("id", "latency_ms")
    assert {k: v for k, v in answer.items() if k not in measured} == {k: v for k, v in expected.items() if k not in measured}
    # "The same again is a cache hit (X-Cache: HIT)"; Server-Timing breaks the time down.
    status, headers, body = split_http(run(predict, env=env, cwd=tmp_path, with_headers=True))
    assert (status, headers["x-cache"], json.loads(body)["cache_hit"]) == (200, "HIT", True)
    assert "cache" in headers["server-timing"]

    # A bad row: the README's answer, with the message it elides.
    [(_, shown, output)] = tour(2)
    problem, shown_problem = (
        json.loads(output),
        json.loads(shown.replace('"type":...,', "").replace('"message":"..."', '"message":"M"')),
    )
    assert {k: problem[k] for k in ("status", "detail", "code")} == {k: shown_problem[k] for k in ("status", "detail", "code")}
    assert [{k: e[k] for k in ("row", "column")} for e in problem["errors"]] == [{"row": 0, "column": "sepal_width"}]

    # Upload a model, promote it, call it, list the releases.
    _, created, uploaded, staged, predicted, releases = (json.loads(o) if o else None for _, _, o in tour(3))
    assert created["full_name"] == "demo/diabetes"
    # "The upload answers with the version: sha256, format, the scikit-learn version it was saved
    # with and the one serving it, estimator class, task, ... features and the signature."
    assert {
        "sha256",
        "format",
        "sklearn_version",
        "serving_sklearn_version",
        "sklearn_version_mismatch",
        "estimator_class",
        "task",
        "signature",
    } <= set(uploaded)
    assert (uploaded["number"], uploaded["format"], uploaded["metrics"]) == (1, "joblib", {"r2": 0.44})
    assert staged["stage"] == "production"
    assert predicted["model"] == "demo/diabetes" and len(predicted["predictions"]) == 1
    assert [(r["kind"], r["to_version"]) for r in releases["results"]] == [("promote", 1)]

    # The other protocols on the same model.
    v2, mlflow = (json.loads(o) for _, _, o in tour(4))
    assert v2["outputs"][0]["data"] == [2]
    assert mlflow == {"predictions": [1]}

    # A batch job: accepted at once; its status; then the result, rows in input order.
    _, (_, _, submitted), (status_command, _, _), (result_command, _, _) = tour(5)
    assert json.loads(submitted)["id"] == 1
    deadline = time.monotonic() + 120
    while json.loads(run(status_command, env=env, cwd=tmp_path))["status"] != "succeeded":
        assert time.monotonic() < deadline, platform.log()[-3000:]
        time.sleep(0.5)
    rows = list(csv.DictReader(io.StringIO(run(result_command, env=env, cwd=tmp_path))))
    assert [(r["sepal_length"], r["prediction"]) for r in rows] == [("5.1", "0"), ("6.7", "2")]
    assert {"probability_0", "probability_1", "probability_2"} <= set(rows[0])

    # Watching: usage answers; "the experiment needs a second version; the drift report needs
    # traffic in the window" (the demo model has no reference data), each said in a 400.
    usage, drift, experiment, results = (json.loads(o) for _, _, o in tour(6))
    assert usage["model"] == "demo/iris" and usage["granularity"] == "hour"
    assert (drift["status"], drift["code"]) == (400, "invalid_input")
    assert (experiment["status"], experiment["detail"]) == (400, "variants[1].version: demo/iris has no version 2")
    assert results["status"] == 404

    # Feedback for the first prediction (the README elides its id).
    [(feedback, _)] = commands(blocks[7])
    answer_id = json.loads(answers[0][2])["id"]
    feedback_answer = json.loads(run(feedback.replace("prd_01...", answer_id), env=env, cwd=tmp_path))
    assert (feedback_answer["prediction_id"], feedback_answer["label"]) == (answer_id, 0)

    # Explanations: the forest's contributions add up to its prediction, as the README shows them;
    # the demo iris, which has no reference data, says why it has none.
    (explained, shown_explained, output), (_, shown_refused, refused) = tour(9)
    answer = json.loads(output)
    expected = json.loads(shown_explained.replace('"prd_01..."', '"an id"'))
    assert set(answer) == set(expected)
    assert {k: v for k, v in answer.items() if k not in ("id", "latency_ms", "explanations")} == {
        k: v for k, v in expected.items() if k not in ("id", "latency_ms", "explanations")
    }
    [row], [shown_row] = answer["explanations"], expected["explanations"]
    assert list(row["contributions"]) == list(shown_row["contributions"])
    assert row["base_value"] + sum(row["contributions"].values()) == pytest.approx(answer["predictions"][0], abs=1e-6)
    for name, value in shown_row["contributions"].items():
        assert row["contributions"][name] == pytest.approx(value, abs=1e-6)
    assert json.loads(refused) == json.loads(shown_refused)
    status, headers, body = split_http(run(explained, env=env, cwd=tmp_path, with_headers=True))
    assert (status, headers["x-cache"], json.loads(body)["explanations"]) == (200, "HIT", answer["explanations"])


def call(platform, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{platform.base_url}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token or platform.api_key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_sqlite_takes_concurrent_writes_from_every_process_without_a_503(platform):
    """The web's threads in two processes write while the worker drains records and beat schedules."""
    status, tokens = call(
        platform, "POST", "/api/v1/auth/token", {"email": "demo@modelhost.local", "password": "modelhost-demo-password"}
    )
    assert status == 200, tokens
    token = tokens["access"]

    def writes(n: int) -> list[tuple[str, int]]:
        seen = []
        status, _org = call(platform, "POST", "/api/v1/orgs", {"name": f"Load {n}", "slug": f"load-{n}"}, token)
        seen.append(("create org", status))
        for i in range(3):
            seen.append(("rename org", call(platform, "PATCH", f"/api/v1/orgs/load-{n}", {"name": f"Load {n}.{i}"}, token)[0]))
            seen.append(
                ("predict", call(platform, "POST", "/api/v1/models/demo/iris/predict", {"inputs": [[n, i, 1.4, 0.2]]})[0])
            )
            seen.append(
                (
                    "api key",
                    call(platform, "POST", f"/api/v1/orgs/load-{n}/api-keys", {"name": f"k{i}", "scopes": ["read"]}, token)[0],
                )
            )
        return seen

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = [outcome for batch in pool.map(writes, range(24)) for outcome in batch]
    assert sorted({outcome for outcome in outcomes}) == [
        ("api key", 201),
        ("create org", 201),
        ("predict", 200),
        ("rename org", 200),
    ]
