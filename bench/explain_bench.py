"""What parameters.explain costs: latency with and without, and the runner's memory.

    .venv/bin/python bench/explain_bench.py [--requests 200] [--rounds 3]

Seeds org "bench-explain" (bench/seed_modelhost.py explain: the inference bench's
RandomForest of 100 trees on 20 features, a plain LogisticRegression the web predicts, and a
scaled SVC pipeline, each with 500 reference rows), starts the runner host (one runner per
organization) and one web worker as the other benches do, and measures, one request at a
time from one client, every request a distinct row (no cache hit):

  - the first explained request on a fresh runner (shap imported there), and the runner's
    memory (RSS and PSS) before any explanation and after the explanations;
  - per model, `--rounds` rounds of `--requests` one-row requests without and with explain,
    alternating, so the machine's other load falls on both; medians and p99 of the round trip
    and of the server's latency_ms;
  - the forest on 100-row requests without and with explain;
  - the sampling explainer's first request (numba compiles shap's code in the runner).

Every explained answer is checked: its contributions add up to its value within 1e-6, and
its value is the predicted class's probability the same request returned. Prints a table and
writes bench/.run/explain-<time>.json. Uses BENCH_DATABASE / BENCH_REDIS_DB like the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from harness import APP_VENV, RUN


def start_one_worker(name: str):
    port = harness.free_port()
    env = harness.modelhost_web_env(HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="1")
    argv = [str(APP_VENV / "bin" / "python"), "-m", "platform_site.serve"]
    return harness.running(name, argv, env=env, port=port)


def predict(port: int, key: str, model: str, rows: list, *, explain: bool) -> tuple[float, dict]:
    parameters = {"probabilities": True}
    if explain:
        parameters["explain"] = True
    body = json.dumps({"inputs": rows, "parameters": parameters}).encode()
    started = time.perf_counter()
    status, _, payload = harness.request(
        port,
        "POST",
        f"/api/v1/models/bench-explain/{model}/predict",
        body=body,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
        timeout=120,
    )
    elapsed = (time.perf_counter() - started) * 1000
    if status != 200:
        raise SystemExit(f"{model}: {status} {payload[:400]!r}")
    answer = json.loads(payload)
    if answer["cache_hit"]:
        raise SystemExit(f"{model}: a cache hit; every request must send a distinct row")
    if explain:
        check(answer, model)
    return elapsed, answer


def check(answer: dict, model: str) -> None:
    for index, row in enumerate(answer["explanations"]):
        total = row["base_value"] + sum(row["contributions"].values())
        if abs(total - row["value"]) > 1e-6:
            raise SystemExit(f"{model}: row {index}'s contributions add up to {total}, not {row['value']}")
        if answer["explainer"]["output"] == "probability of the predicted class":
            probability = answer["probabilities"][index][answer["classes"].index(row["class"])]
            if abs(probability - row["value"]) > 1e-6:
                raise SystemExit(
                    f"{model}: row {index} explains {row['value']}, but the predicted class's probability is {probability}"
                )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def runner_of(host: harness.Server) -> int:
    """The one runner of the organization (the host's only child but the sandbox's)."""
    children = [pid for pid in harness.descendants(host.process.pid) if "inference.runners.host" in harness.cmdline(pid)]
    if len(children) != 1:
        raise SystemExit(f"expected one runner, found {children}")
    return children[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    harness.prepare_database()
    seeded = harness.seed("explain")["orgs"]["bench-explain"]
    key, pool = seeded["key"], seeded["rows"]
    harness.redis_flush_bench_db()
    report: dict = {"requests": args.requests, "rounds": args.rounds}
    cursor = iter(range(10**9))

    def rows(n: int) -> list:
        out = []
        for _ in range(n):
            i = next(cursor)
            row = pool[i % len(pool)]
            out.append([*row[:-1], row[-1] + i * 1e-7])  # a distinct row every time: no cache hit
        return out

    with contextlib.ExitStack() as stack:
        host = stack.enter_context(harness.runner_host(RUNNER_PROCESSES_PER_ORG="1"))
        server = stack.enter_context(start_one_worker("modelhost-explain"))
        for _ in range(20):
            predict(server.port, key, "rf", rows(1), explain=False)
        runner = runner_of(host)
        report["runner_rss_mb_before"] = harness.rss_mb(runner)
        report["runner_pss_mb_before"] = harness.pss_mb(runner)
        report["first_explained_ms"], _ = predict(server.port, key, "rf", rows(1), explain=True)
        report["second_explained_ms"], _ = predict(server.port, key, "rf", rows(1), explain=True)
        report["runner_rss_mb_after_tree"] = harness.rss_mb(runner)
        report["runner_pss_mb_after_tree"] = harness.pss_mb(runner)

        cases = [("rf", 1), ("linear", 1), ("rf", 100)]
        figures: dict = {}
        for model, n in cases:
            predict(server.port, key, model, rows(n), explain=False)  # loaded and warm
            predict(server.port, key, model, rows(n), explain=True)
            for round_number in range(args.rounds):
                for explain in (False, True) if round_number % 2 == 0 else (True, False):
                    label = f"{model}, {n} row{'s' if n > 1 else ''}, {'explain' if explain else 'plain'}"
                    entry = figures.setdefault(label, {"round_trip": [], "server": []})
                    count = args.requests if n == 1 else max(10, args.requests // 10)
                    for _ in range(count):
                        elapsed, answer = predict(server.port, key, model, rows(n), explain=explain)
                        entry["round_trip"].append(elapsed)
                        entry["server"].append(answer["latency_ms"])
        report["figures"] = {
            label: {
                "n": len(entry["round_trip"]),
                "p50_ms": statistics.median(entry["round_trip"]),
                "p99_ms": percentile(entry["round_trip"], 0.99),
                "server_p50_ms": statistics.median(entry["server"]),
            }
            for label, entry in figures.items()
        }
        report["runner_rss_mb_after_all_tree"] = harness.rss_mb(runner)
        report["runner_pss_mb_after_all_tree"] = harness.pss_mb(runner)
        predict(server.port, key, "svc", rows(1), explain=False)
        report["sampling_first_ms"], _ = predict(server.port, key, "svc", rows(1), explain=True)
        report["sampling_second_ms"], _ = predict(server.port, key, "svc", rows(1), explain=True)
        report["sampling_ten_rows_ms"], _ = predict(server.port, key, "svc", rows(10), explain=True)
        report["runner_rss_mb_after_sampling"] = harness.rss_mb(runner)
        report["runner_pss_mb_after_sampling"] = harness.pss_mb(runner)

    print()
    print("| case | requests | p50 round trip | p99 | server latency_ms p50 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, f in report["figures"].items():
        print(f"| {label} | {f['n']} | {f['p50_ms']:.2f} ms | {f['p99_ms']:.2f} ms | {f['server_p50_ms']:.2f} ms |")
    print()
    print(
        f"first explained request on a warm runner (imports shap): {report['first_explained_ms']:.0f} ms; "
        f"the next: {report['second_explained_ms']:.1f} ms"
    )
    print(
        f"sampling explainer (SVC pipeline, 20 background rows): first {report['sampling_first_ms']:.0f} ms (numba compiles), "
        f"then {report['sampling_second_ms']:.0f} ms a row, 10 rows {report['sampling_ten_rows_ms']:.0f} ms"
    )
    print(
        "runner memory, RSS / PSS: before any explanation "
        f"{report['runner_rss_mb_before']:.0f} / {report['runner_pss_mb_before']:.0f} MB; after TreeSHAP "
        f"{report['runner_rss_mb_after_all_tree']:.0f} / {report['runner_pss_mb_after_all_tree']:.0f} MB; "
        "after the sampling explainer "
        f"{report['runner_rss_mb_after_sampling']:.0f} / {report['runner_pss_mb_after_sampling']:.0f} MB"
    )
    RUN.mkdir(parents=True, exist_ok=True)
    out = RUN / f"explain-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
