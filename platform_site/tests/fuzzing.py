"""Run schemathesis over a live platform's OpenAPI schema, as test_fuzz.py does, and read what it saw.

The `schemathesis run` CLI does the work (its examples, coverage, fuzzing and stateful phases);
this module gives it real identifiers to aim at, the tenant's credentials (fuzz_hooks.py), and
counts the requests and the 5xx answers from its NDJSON report.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
SEED = 17
# Cases per operation in the fuzzing phase; the coverage phase adds its own boundary cases
# (most of the requests). Five keeps one run near two minutes on a loaded two-core machine.
MAX_EXAMPLES = 5


@dataclass
class Tenant:
    base_url: str
    org: str
    model: str
    api_key: str
    jwt: str


@dataclass
class FuzzRun:
    returncode: int
    output: str
    operations: set[str] = field(default_factory=set)
    statuses: Counter = field(default_factory=Counter)  # (operation, status) -> requests
    server_errors: list[str] = field(default_factory=list)  # "METHOD url -> status: body"

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def answered(self, operation: str, status: int) -> bool:
        return self.statuses[(operation, status)] > 0


def seed_targets(tenant: Tenant) -> dict[str, object]:
    """Create what the schema's path parameters name: a second version (a tree, served by a
    runner), an experiment, a prediction, a batch job and a spare key. Returns the path values."""
    import joblib
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    session = requests.Session()
    session.headers["X-API-Key"] = tenant.api_key
    models = f"{tenant.base_url}/api/v1/models/{tenant.org}/{tenant.model}"

    def answer(response: requests.Response, status: int) -> dict:
        assert response.status_code == status, (response.request.method, response.url, response.status_code, response.text[:500])
        return response.json()

    data = load_iris()
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(pd.DataFrame(data.data, columns=features), data.target)
    buffer = io.BytesIO()
    joblib.dump(tree, buffer)
    version = answer(session.post(f"{models}/versions", files={"file": ("tree.joblib", buffer.getvalue())}, timeout=120), 201)
    variants = [{"version": 1, "weight": 50}, {"version": version["number"], "weight": 50}]
    experiment = answer(
        session.post(f"{models}/experiments", json={"name": "fuzz", "variants": variants, "metric": "accuracy"}, timeout=30), 201
    )
    prediction = answer(session.post(f"{models}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, timeout=60), 200)
    rows = "sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
    job = answer(session.post(f"{models}/batch-jobs", files={"file": ("rows.csv", rows.encode())}, timeout=30), 202)
    org = f"{tenant.base_url}/api/v1/orgs/{tenant.org}"
    spare = answer(session.post(f"{org}/api-keys", json={"name": "spare", "scopes": ["read"]}, timeout=30), 201)
    [owner] = answer(session.get(f"{org}/members", timeout=30), 200)["results"]
    return {
        "org": tenant.org,
        "model": tenant.model,
        "number": version["number"],
        "experiment_id": experiment["id"],
        "prediction_id": prediction["id"],
        "job_id": job["id"],
        # A spare key and the last owner: deleting either leaves the fuzz its credentials
        # (the platform refuses to remove the last owner).
        "key_id": spare["id"],
        "member_id": owner["id"],
    }


def config_toml(parameters: dict[str, object]) -> str:
    """schemathesis.toml: every path parameter pinned to a real resource, so the cases reach the
    views rather than a 404 (schemathesis's coverage phase ignores a value bound with a probability)."""
    # No cache and no example database: each run starts from the seed alone, and leaves nothing behind.
    lines = ["[cache]", "enabled = false", "", "[phases.coverage]", "unexpected-methods = []", "", "[parameters]"]
    lines += [f'"path.{name}" = {json.dumps(value)}' for name, value in parameters.items()]
    return "\n".join(lines) + "\n"


def run_schemathesis(tenant: Tenant, *, parameters: dict[str, object], folder: Path, name: str, arguments: list[str]) -> FuzzRun:
    """`schemathesis run` against the tenant's platform with the fixed seed; what it sent and got."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "schemathesis.toml"
    config.write_text(config_toml(parameters))
    report = folder / f"{name}.ndjson"
    # One worker: schemathesis's threads parse lambdas' source with `ast` at once, which CPython
    # 3.11.7 can fail with "SystemError: AST constructor recursion depth mismatch".
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{tenant.base_url}/api/schema/",
        "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--checks", "not_a_server_error",
        "--generation-database", "none",
        "--workers", "1", "--request-timeout", "60", "--report", "ndjson", "--report-ndjson-path", str(report),
        "--no-color", *arguments,
    ]  # fmt: skip
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "platform_site.tests.fuzz_hooks",
        "HYPOTHESIS_STORAGE_DIRECTORY": str(folder / "hypothesis"),  # not the checkout
        "MODELHOST_FUZZ_CREDENTIALS": json.dumps({"api_key": tenant.api_key, "jwt": tenant.jwt}),
    }
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    run = FuzzRun(returncode=finished.returncode, output=finished.stdout + finished.stderr)
    if report.exists():
        read_report(report, run)
    return run


def read_report(report: Path, run: FuzzRun) -> None:
    for line in report.read_text().splitlines():
        scenario = json.loads(line).get("ScenarioFinished")
        if scenario is None:
            continue
        cases = scenario["recorder"].get("cases", {})
        for case_id, interaction in scenario["recorder"].get("interactions", {}).items():
            response = interaction.get("response")
            if response is None:
                continue
            case = cases[case_id]["value"]
            operation = f"{case['method']} {case['path']}"  # a stateful scenario spans operations
            run.operations.add(operation)
            run.statuses[(operation, response["status_code"])] += 1
            if response["status_code"] >= 500:
                request = interaction["request"]
                content = response.get("content") or {}
                body = base64.b64decode(content["$base64"]).decode(errors="replace") if "$base64" in content else str(content)
                run.server_errors.append(f"{request['method']} {request['uri']} -> {response['status_code']}: {body[:300]}")
