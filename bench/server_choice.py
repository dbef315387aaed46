"""Which HTTP server should run Modelhost's web process? Measure, on this machine.

    python3 bench/server_choice.py [--seconds 5] [--rounds 2] [--servers sync,gthread,uvicorn,granian]

For each candidate, 2 workers each (2 cores), Modelhost (full path: key, route, limit,
cache, predict, record) and the floor app are served the same way and loaded with the same wrk
as bench/inference_bench.py (same checks, same distinct-input miss and repeated-input hit):

  sync     gunicorn, sync workers (the Procfile's server until granian): one request at a time per
           worker, no keep-alive (the connection closes after each answer).
  gthread  gunicorn, gthread workers with 4 threads: keep-alive, and one worker can overlap a
           request's Redis waits with another request's CPU.
  uvicorn  uvicorn with uvloop + httptools, Modelhost through platform_site.asgi (Django runs
           the sync view in a thread per request), the floor through uvicorn's WSGI adapter.
  granian  granian's WSGI interface (Rust HTTP, Python in its blocking threads).

All from bench/.venv-servers (requirements.txt + gunicorn + uvicorn[standard]'s parts), so the
application code and libraries are the same in every candidate.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import inference_bench as ib  # noqa: E402
from harness import BENCH, ROOT, RUN, SERVERS_VENV  # noqa: E402

WORKERS = ib.WORKERS
GTHREADS = 4


def _bin(name: str) -> str:
    return str(SERVERS_VENV / "bin" / name)


def start(candidate: str, app: str):
    """A server for `app` ("modelhost" or "floor") under `candidate`."""
    port = harness.free_port()
    if app == "modelhost":
        shutil.rmtree(RUN / "prometheus", ignore_errors=True)
        env = harness.modelhost_web_env(HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY=str(WORKERS))
        wsgi, asgi = "platform_site.wsgi:application", "platform_site.asgi:application"
        cwd = ROOT
    else:
        env = ib.floor_env()
        env.update(HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY=str(WORKERS))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        wsgi = asgi = "floor_app:app"
        cwd = BENCH
    env["PATH"] = f"{SERVERS_VENV / 'bin'}:{os.environ['PATH']}"
    if candidate in ("sync", "gthread"):
        argv = [
            _bin("gunicorn"),
            wsgi,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(WORKERS),
            "--worker-class",
            candidate,
            "--threads",
            str(GTHREADS if candidate == "gthread" else 1),
            "--keep-alive",
            "5",
            "--log-level",
            "warning",
        ]
    elif candidate == "uvicorn":
        argv = [
            _bin("uvicorn"),
            asgi if app == "modelhost" else wsgi,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(WORKERS),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        if app == "floor":
            argv += ["--interface", "wsgi"]
    elif candidate == "granian":
        argv = [
            _bin("granian"),
            "--interface",
            "wsgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(WORKERS),
            "--log-level",
            "warning",
            wsgi,
        ]
    else:
        raise SystemExit(f"unknown server {candidate!r}")
    return harness.running(f"{app}-{candidate}", argv, env=env, cwd=cwd, port=port, ready_path="/healthz")


def cases(candidate: str, key: str) -> list[tuple[str, ib.Case]]:
    headers = {"X-API-Key": key}
    mh, fl = f"modelhost-{candidate}", f"floor-{candidate}"
    return [
        ("modelhost", ib.Case(mh, "iris", "one", "/api/v1/models/bench/iris/predict", "native", headers)),
        ("modelhost", ib.Case(mh, "iris", "hit", "/api/v1/models/bench/iris/predict", "native", headers)),
        ("floor", ib.Case(fl, "iris", "one", "/predict/iris", "native")),
        ("floor", ib.Case(fl, "iris", "nopredict", "/nopredict", "native")),
    ]


def main() -> None:
    harness.ensure_peers_python()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--servers", default="sync,gthread,uvicorn,granian")
    parser.add_argument("--quiet-wait", type=float, default=8.0)
    args = parser.parse_args()
    args.drain_during = False
    started = time.monotonic()
    seeded = ib.prepare()
    key = seeded["orgs"]["bench"]["key"]
    outcomes: list[ib.Outcome] = []
    print(
        f"wrk -t1 -c{args.connections} -d{args.seconds}s x {args.rounds} rounds per case; {WORKERS} workers per server",
        flush=True,
    )
    for candidate in args.servers.split(","):
        plan = cases(candidate, key)
        with contextlib.ExitStack() as stack:
            servers = {
                "modelhost": stack.enter_context(start(candidate, "modelhost")),
                "floor": stack.enter_context(start(candidate, "floor")),
            }
            print(f"{candidate}: modelhost pids {servers['modelhost'].pids()}, floor pids {servers['floor'].pids()}", flush=True)
            rounds: dict[int, list[ib.Round]] = {i: [] for i in range(len(plan))}
            for number in range(args.rounds):
                for index, (which, case) in enumerate(plan):
                    rounds[index].append(ib.measure_round(servers[which], case, args, warm=number == 0))
            outcomes += [ib.Outcome(case=case, rounds=rounds[i]) for i, (_, case) in enumerate(plan)]
    print()
    print(ib.table(outcomes))
    print()
    print(
        "| server | Modelhost miss req/s | Modelhost hit req/s | floor predict req/s | floor no-predict req/s | miss / "
        "floor predict | hit / floor no-predict |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for candidate in args.servers.split(","):
        miss, hit, floor, bare = (
            ib.find(outcomes, f"{server}-{candidate}", "iris", kind)
            for server, kind in (("modelhost", "one"), ("modelhost", "hit"), ("floor", "one"), ("floor", "nopredict"))
        )
        print(
            f"| {candidate} | {miss.rps:,.0f} | {hit.rps:,.0f} | {floor.rps:,.0f} | {bare.rps:,.0f} | "
            f"{miss.rps / floor.rps:.2f} | {hit.rps / bare.rps:.2f} |"
        )
    notes = ib.spread_notes(outcomes)
    if notes:
        print()
        print(notes)
    print(f"\n{len(outcomes)} cases in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
