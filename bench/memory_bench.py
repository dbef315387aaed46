"""Memory and cold start of one Modelhost web process.

    python3 bench/memory_bench.py

Seeds 100 registered models across 10 organizations (mem-00 .. mem-09, ten small
LogisticRegressions each, every one a distinct file uploaded through the real
`registry.services.upload_version` path with its sandbox check, once; reruns reuse them),
plus the bench org's iris model. Then starts Modelhost's web process with ONE granian
worker and measures:

  1. the very first request the worker serves: a predict on iris (URLconf not yet imported,
     API key, route and model not cached), after the worker booted and sat idle 3 s;
  2. a cold model on a warm process: restart, one /healthz first (as a load balancer's
     readiness probe would do), then the first predict on iris;
  3. the worker's RSS (from /proc) after boot, after that request, and after one predict on
     each of the 100 models, with how many models the worker's LRU then holds.

Targets (issue 5): RSS < 300 MB after touching all 100; cold first request on iris < 100 ms.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import APP_VENV, RUN  # noqa: E402

RSS_TARGET_MB = 300
COLD_TARGET_MS = 100
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def start_one_worker(name: str):
    port = harness.free_port()
    env = harness.modelhost_web_env(HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="1")
    argv = [str(APP_VENV / "bin" / "python"), "-m", "platform_site.serve"]
    return harness.running(name, argv, env=env, port=port, ready_path=None)


def wait_for_worker(server: harness.Server, timeout: float = 60) -> int:
    """The worker's pid once the server logged that it started it (no request sent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = harness.descendants(server.process.pid)
        if children and "Started worker" in server.log.read_text():
            return children[0]
        time.sleep(0.1)
    raise SystemExit(f"no web worker after {timeout}s; see {server.log}")


def predict(port: int, key: str, org: str, model: str, row: list[float]) -> tuple[float, dict, dict]:
    body = json.dumps({"inputs": [row]}).encode()
    started = time.perf_counter()
    status, headers, payload = harness.request(
        port,
        "POST",
        f"/api/v1/models/{org}/{model}/predict",
        body=body,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    elapsed_ms = (time.perf_counter() - started) * 1000
    if status != 200:
        raise SystemExit(f"{org}/{model}: {status} {payload[:300]!r}")
    return elapsed_ms, headers, json.loads(payload)


def main() -> None:
    harness.ensure_peers_python()
    harness.build_models()
    harness.prepare_database()
    started = time.monotonic()
    bench_org = harness.seed("inference")["orgs"]["bench"]
    memory_orgs = harness.seed("memory")["orgs"]
    print(
        f"seeded 1 + {sum(len(o['models']) for o in memory_orgs.values())} models in {len(memory_orgs)} + 1 "
        f"organizations ({time.monotonic() - started:.0f}s)"
    )
    harness.redis_flush_bench_db()

    report: dict = {}
    stack = contextlib.ExitStack()
    runner_host = stack.enter_context(harness.runner_host())
    report["runner_host_boot_pss_mb"] = harness.pss_mb(runner_host.process.pid)
    with start_one_worker("modelhost-memory") as server:
        worker = wait_for_worker(server)
        time.sleep(3)
        report["rss_boot_mb"] = harness.rss_mb(worker)
        ms, headers, body = predict(server.port, bench_org["key"], "bench", "iris", IRIS_ROW)
        report["first_request_ms"] = ms
        report["first_request_server_timing"] = headers.get("server-timing")
        report["first_request_latency_ms"] = body["latency_ms"]
        report["rss_after_first_mb"] = harness.rss_mb(worker)
        touched = 0
        slowest = (0.0, "")
        for slug, org in memory_orgs.items():
            for name in org["models"]:
                ms, _, _ = predict(server.port, org["key"], slug, name, IRIS_ROW)
                slowest = max(slowest, (ms, f"{slug}/{name}"))
                touched += 1
        report["touched"] = touched
        report["slowest_first_touch"] = slowest
        report["rss_after_all_mb"] = harness.rss_mb(worker)
        runners = harness.descendants(runner_host.process.pid)
        report["runners"] = len(runners)
        report["runners_pss_mb"] = sum(harness.pss_mb(pid) for pid in runners)
        report["runner_host_pss_mb"] = harness.pss_mb(runner_host.process.pid)
        report["runners_rss_mb"] = sum(harness.rss_mb(pid) for pid in runners)
        # A forest in an organization whose runner is already up, not yet loaded there; then one
        # in an organization with no runner yet (fork + load).
        slug0 = next(iter(memory_orgs))
        forests = [name for name, model in memory_orgs[slug0]["models"].items() if model.get("kind") == "rf"]
        for pid in runners:
            os.kill(pid, signal.SIGTERM)  # stopped as the host stops idle runners: no crash, no backoff
        time.sleep(1.5)
        ms, _, _ = predict(server.port, memory_orgs[slug0]["key"], slug0, forests[0], [6.1, 2.8, 4.7, 1.2])
        report["runner_start_and_load_ms"] = ms
        ms, _, _ = predict(server.port, memory_orgs[slug0]["key"], slug0, forests[1], [6.1, 2.8, 4.7, 1.2])
        report["cold_model_on_warm_runner_ms"] = ms
        ms, _, _ = predict(server.port, memory_orgs[slug0]["key"], slug0, forests[1], [6.2, 2.8, 4.7, 1.2])
        report["warm_forest_ms"] = ms
        ms, _, _ = predict(server.port, bench_org["key"], "bench", "iris", [6.0, 3.0, 4.8, 1.8])
        report["warm_iris_ms"] = ms

    with start_one_worker("modelhost-cold-model") as server:
        wait_for_worker(server)
        status, _, _ = harness.request(server.port, "GET", "/healthz")
        assert status == 200, status
        ms, headers, body = predict(server.port, bench_org["key"], "bench", "iris", [5.9, 3.0, 5.1, 1.8])
        report["cold_model_ms"] = ms
        report["cold_model_server_timing"] = headers.get("server-timing")

    print()
    print("| measure | value | target | met |")
    print("| --- | ---: | --- | --- |")
    rows = [
        ("worker RSS after boot", f"{report['rss_boot_mb']:.0f} MB", "", ""),
        ("worker RSS after the first iris request", f"{report['rss_after_first_mb']:.0f} MB", "", ""),
        (
            f"worker RSS after one predict on each of {report['touched']} models",
            f"{report['rss_after_all_mb']:.0f} MB",
            f"< {RSS_TARGET_MB} MB",
            report["rss_after_all_mb"] < RSS_TARGET_MB,
        ),
        (
            f"runner host + {report['runners']} runners after that (PSS: their own pages plus their share of the host's)",
            f"{report['runner_host_pss_mb'] + report['runners_pss_mb']:.0f} MB",
            "",
            "",
        ),
        ("the same runners' RSS added up (counts shared pages once per runner)", f"{report['runners_rss_mb']:.0f} MB", "", ""),
        (
            "a runner started and a forest loaded in it, first request",
            f"{report['runner_start_and_load_ms']:.0f} ms",
            "< 300 ms",
            report["runner_start_and_load_ms"] < 300,
        ),
        (
            "another forest, first request on that warm runner",
            f"{report['cold_model_on_warm_runner_ms']:.0f} ms",
            f"< {COLD_TARGET_MS} ms",
            report["cold_model_on_warm_runner_ms"] < COLD_TARGET_MS,
        ),
        ("that forest again", f"{report['warm_forest_ms']:.1f} ms", "", ""),
        (
            "first request the worker serves (iris; URLconf, key, route, model all cold)",
            f"{report['first_request_ms']:.0f} ms",
            f"< {COLD_TARGET_MS} ms",
            report["first_request_ms"] < COLD_TARGET_MS,
        ),
        (
            "first iris predict after a /healthz (model cold, process warm)",
            f"{report['cold_model_ms']:.0f} ms",
            f"< {COLD_TARGET_MS} ms",
            report["cold_model_ms"] < COLD_TARGET_MS,
        ),
        (
            "slowest first touch among the 100",
            f"{report['slowest_first_touch'][0]:.0f} ms ({report['slowest_first_touch'][1]})",
            "",
            "",
        ),
        ("iris again after the 100", f"{report['warm_iris_ms']:.1f} ms", "", ""),
    ]
    for what, value, target, met in rows:
        verdict = "" if met == "" else ("yes" if met else "**no**")
        print(f"| {what} | {value} | {target} | {verdict} |")
    print()
    print(f"Server-Timing of the very first request: {report['first_request_server_timing']}")
    print(f"Server-Timing of the cold-model request: {report['cold_model_server_timing']}")
    stack.close()
    out = RUN / f"memory-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"raw figures in {out.relative_to(harness.ROOT)}")


if __name__ == "__main__":
    main()
