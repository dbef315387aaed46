"""What reading bodies on the event loop costs a prediction: granian's RSGI interface with
platform_site.rsgi (the web today) against granian's WSGI interface (the web before).

    python3 bench/slow_clients.py [--requests 3000] [--rounds 3] [--clients 4]
    python3 bench/slow_clients.py --floor [--rounds 3]     the servers' own cost: wrk on the
                                                          floor app's /nopredict, 8 s a round,
                                                          also answered on the event loop and
                                                          by a minimal RSGI application

Seeds the benchmark organization (bench/seed_modelhost.py: iris, predicted in the web), then
starts each server in turn with the same settings (2 workers, 2 request threads each, one
native thread) and sends `--requests` iris predictions (distinct rows: cache misses) from
`--clients` keep-alive connections; `--rounds` rounds, the two servers interleaved. Prints,
per server, the web workers' CPU per request (user + system, from /proc) and requests per
second, median over the rounds. Writes bench/.run/slow-clients-<time>.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from harness import APP_VENV, RUN

PYTHON = str(APP_VENV / "bin" / "python")
SERVERS = {
    "rsgi (platform_site.serve)": [PYTHON, "-m", "platform_site.serve", "platform_site.wsgi:application"],
    "wsgi (granian --interface wsgi)": [
        PYTHON,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--workers",
        "2",
        "--blocking-threads",
        "2",
        "--http",
        "1",
        "--no-ws",
        "--http1-header-read-timeout",
        "10000",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "platform_site.wsgi:application",
    ],
}


def load(port: int, key: str, *, requests: int, clients: int, offset: int) -> float:
    """Send the predictions; return the wall-clock seconds they took."""
    per_client = requests // clients
    failures: list[str] = []

    def client(number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        for i in range(per_client):
            unique = offset + number * per_client + i
            body = json.dumps({"inputs": [[5.1 + unique * 1e-9, 3.5, 1.4, 0.2]]})
            conn.request("POST", "/api/v1/models/bench/iris/predict", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failures.append(f"{response.status}")
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} predictions failed: {failures[:5]}")
    return time.monotonic() - started


GRANIAN = [PYTHON, "-m", "granian", "--workers", "2", "--http", "1", "--no-ws", "--host", "127.0.0.1", "--port", "{port}"]
# Around the floor app: the web's RSGI wrapper through a request thread and on the event loop
# (platform_site.on_loop), granian's WSGI threads, and the least an RSGI application does.
FLOOR_SERVERS = {
    "rsgi (platform_site.serve)": [PYTHON, "-m", "platform_site.serve", "floor_app:app"],
    "rsgi, answered on the loop": [PYTHON, "-m", "platform_site.serve", "floor_app:loop_app"],
    "wsgi (granian --interface wsgi)": [*SERVERS["wsgi (granian --interface wsgi)"][:-1], "floor_app:app"],
    "minimal RSGI application": [*GRANIAN, "--interface", "rsgi", "floor_app:rsgi_app"],
}


def floor(rounds: int) -> dict:
    """CPU per request of each server around bench/floor_app.py's /nopredict (no framework, no model)."""
    script = RUN / "nopredict.lua"
    RUN.mkdir(parents=True, exist_ok=True)
    script.write_text(
        'wrk.method = "POST"\nwrk.path = "/nopredict"\nwrk.headers["Content-Type"] = "application/json"\n'
        "wrk.body = '{\"inputs\": [[5.1, 3.5, 1.4, 0.2]]}'\n"
    )
    results: dict[str, list[dict]] = {name: [] for name in FLOOR_SERVERS}
    for _ in range(rounds):
        for name, argv in FLOOR_SERVERS.items():
            port = harness.free_port()
            env = harness.modelhost_web_env(
                HOST="127.0.0.1",
                PORT=str(port),
                WEB_CONCURRENCY="2",
                WEB_THREADS="2",
                PYTHONPATH=f"{harness.BENCH}:{harness.ROOT}",
                OPENBLAS_NUM_THREADS="1",
                OMP_NUM_THREADS="1",
                MKL_NUM_THREADS="1",
            )
            with harness.running("slow-clients-floor", argv, env=env, port=port) as web:
                workers = harness.descendants(web.process.pid)
                harness.run_wrk(port=port, script=script, seconds=2)
                before = sum(harness.cpu_seconds(pid) for pid in workers)
                run = harness.run_wrk(port=port, script=script, seconds=8)
                cpu = sum(harness.cpu_seconds(pid) for pid in workers) - before
            results[name].append({"cpu_ms_per_request": 1000 * cpu / run.requests, "requests_per_second": run.rps})
            print(f"floor {name}: {results[name][-1]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--floor", action="store_true", help="measure the servers around the floor app, not Modelhost")
    args = parser.parse_args()
    if args.floor:
        report(floor(args.rounds), args, "slow-clients-floor")
        return

    harness.build_models()
    harness.prepare_database()
    key = harness.seed("inference")["orgs"]["bench"]["key"]
    harness.redis_flush_bench_db()
    results: dict[str, list[dict]] = {name: [] for name in SERVERS}
    offset = 0
    with harness.runner_host():
        for round_number in range(args.rounds):
            for name, argv in SERVERS.items():
                port = harness.free_port()
                env = harness.modelhost_web_env(
                    HOST="127.0.0.1",
                    PORT=str(port),
                    WEB_CONCURRENCY="2",
                    WEB_THREADS="2",
                    OPENBLAS_NUM_THREADS="1",
                    OMP_NUM_THREADS="1",
                    MKL_NUM_THREADS="1",
                )
                with harness.running("slow-clients-web", argv, env=env, port=port) as web:
                    load(port, key, requests=200, clients=args.clients, offset=offset)  # warm up
                    offset += 200
                    workers = harness.descendants(web.process.pid)
                    cpu_before = sum(harness.cpu_seconds(pid) for pid in workers)
                    seconds = load(port, key, requests=args.requests, clients=args.clients, offset=offset)
                    offset += args.requests
                    cpu = sum(harness.cpu_seconds(pid) for pid in workers) - cpu_before
                done = args.requests // args.clients * args.clients
                results[name].append({"cpu_ms_per_request": 1000 * cpu / done, "requests_per_second": done / seconds})
                print(f"round {round_number + 1} {name}: {results[name][-1]}", flush=True)
    report(results, args, "slow-clients")


def report(results: dict[str, list[dict]], args, stem: str) -> None:
    summary = {
        name: {
            "cpu_ms_per_request": round(statistics.median(r["cpu_ms_per_request"] for r in runs), 3),
            "requests_per_second": round(statistics.median(r["requests_per_second"] for r in runs), 1),
        }
        for name, runs in results.items()
    }
    print(json.dumps(summary, indent=1))
    RUN.mkdir(parents=True, exist_ok=True)
    out = RUN / f"{stem}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "rounds": results, "median": summary}, indent=1))
    print(f"raw figures in {out.relative_to(harness.ROOT)}")


if __name__ == "__main__":
    main()
