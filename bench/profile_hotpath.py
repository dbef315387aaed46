"""Where a Modelhost predict request spends its time, step by step, without HTTP or load noise.

    python3 bench/profile_hotpath.py [--requests 3000] [--model iris]

Runs in one process with the benchmark's environment (real PostgreSQL and Redis): the
production WSGI entry point (platform_site.wsgi.application: the prediction dispatcher, then
the view) is called directly with a WSGI environ for `POST /api/v1/models/bench/<model>/predict`,
each request with a distinct input (cache miss), then the same with a repeated input (cache
hit). For comparison, the same misses through Django's full handler (every middleware and
the URL resolver), the path a prediction took before the dispatcher.

Each hot-path step is wrapped (in this process only; no application code changes) with a
timer reading both the thread's CPU clock and the wall clock, so the table says what a step
costs in CPU and what it costs in waiting (the Redis round trips). Other sessions' load on
this machine moves the wall figures, hardly the CPU ones. A short cProfile pass then lists the
costliest functions (cProfile inflates Python-heavy code; read it for ranking, not for µs).
The HTTP server's own share (granian's parsing and socket writes) is not in here: it is the
floor's cost in bench/inference_bench.py.

Re-executes itself under the project's .venv with the bench environment.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

TOTALS: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
WHOLE = "whole request (platform_site.wsgi.application)"
VIEW = "  the view (views_native._predict)"


def timed(label: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            entry = TOTALS[label]
            entry[0] += time.thread_time() - cpu
            entry[1] += time.perf_counter() - wall
            entry[2] += 1

    return wrapper


def instrument() -> list[str]:
    """Wrap the hot path's steps; returns the labels in display order."""
    from inference import hotpath, limits, prediction_cache, predictors, records, views_native
    from platform_site.dispatch import PredictionDispatcher

    steps = [
        (WHOLE, PredictionDispatcher, "__call__"),
        (VIEW, views_native, "_predict"),
        ("    read body", views_native, "read_body"),
        ("    authenticate (API key, in-process cache)", hotpath, "authenticate"),
        ("    resolve route (in-process cache)", hotpath, "_route_for"),
        ("    parse body (orjson + field checks)", views_native, "parse_native"),
        ("    prediction cache key (blake2b)", prediction_cache, "cache_key"),
        ("    rate limit + quota + cache read (Redis EVALSHA)", limits, "check_and_count"),
        ("    decode a cached answer", prediction_cache, "decode"),
        ("    predict (the web's own arithmetic, or the runner's round trip)", predictors, "predict"),
        ("    build the record", hotpath, "_record"),
        ("    record + cache store (XADD+SET queued on the socket)", records, "publish"),
        ("    Prometheus counters + histogram", hotpath, "_observe"),
        ("    render the JSON response", views_native, "_json"),
    ]
    for label, owner, name in steps:
        setattr(owner, name, timed(label, getattr(owner, name)))
    # The signature check is a closure made per request by parse_native: wrap what it returns.
    parse = views_native.parse_native

    def parse_and_wrap(raw):
        call = parse(raw)
        call.validate = timed("    validate against the signature", call.validate)
        return call

    views_native.parse_native = parse_and_wrap
    labels = [label for label, _, _ in steps]
    labels.insert(labels.index("    prediction cache key (blake2b)"), "    validate against the signature")
    return labels


def reexec_under_app_venv() -> None:
    if os.environ.get("MH_PROFILE_CHILD") == "1":
        return
    sys.path.insert(0, str(BENCH))
    import harness

    env = harness.modelhost_env(MH_PROFILE_CHILD="1")
    os.chdir(ROOT)
    harness.prepare_database()  # on a new machine, before any other bench has made it
    harness.build_models()
    python = str(harness.APP_VENV / "bin" / "python")
    os.execve(python, [python, *sys.argv], env)


def environ_for(path: str, body: bytes, key: str) -> dict:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_X_API_KEY": key,
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def main() -> None:
    reexec_under_app_venv()
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--model", default="iris")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument(
        "--repeat", type=int, default=3, help="passes of the uninstrumented loop; the one with the least CPU is shown"
    )
    parser.add_argument(
        "--loop-only", action="store_true", help="only the uninstrumented loop (for comparing two versions of the code)"
    )
    parser.add_argument(
        "--on-loop",
        action="store_true",
        help="call the path a web worker's event loop answers itself (platform_site.on_loop) instead of the thread's",
    )
    args = parser.parse_args()

    import django

    sys.path.insert(0, str(ROOT))
    django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    from platform_site.on_loop import LeaveTheLoop, answer_now
    from platform_site.wsgi import application

    sys.path.insert(0, str(BENCH))
    import harness

    key = harness.seed("inference")["orgs"]["bench"]["key"]
    rows = json.loads((harness.ARTIFACTS / f"{args.model}.rows.json").read_text())
    handler = application
    path = f"/api/v1/models/bench/{args.model}/predict"
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    def body(i: int, unique: bool) -> bytes:
        batch = []
        for r in range(args.rows):
            row = list(rows[(i + r) % len(rows)] if unique else rows[r % len(rows)])
            if unique:
                row[0] = float(f"{row[0]:.4f}{i:09d}")
            batch.append(row)
        return json.dumps({"inputs": batch}).encode()

    def one(i: int, unique: bool, on_loop: bool | None = None) -> None:
        environ = environ_for(path, body(i, unique), key)
        result = None
        if (args.on_loop if on_loop is None else on_loop) and hasattr(handler, "on_loop"):
            # As platform_site.rsgi does: a request the loop does not take up (the route's
            # cache entry expired, every ROUTE_CACHE_SECONDS) goes to the thread's path.
            try:
                result = answer_now(handler.on_loop, environ, start_response)
            except LeaveTheLoop:
                environ["wsgi.input"].seek(0)
        if result is None:
            result = handler(environ, start_response)
        for _ in result:
            pass
        if hasattr(result, "close"):  # as a WSGI server does (the dispatcher returns a closed response's body as a list)
            result.close()

    import redis as redis_lib

    ping = redis_lib.Redis.from_url(harness.REDIS_URL)
    offset = int(time.time()) % 100_000 * 10_000  # distinct inputs from any earlier run
    # The machine's speed drifts by 10-20 % over seconds (other tenants of the host): the
    # pass with the least CPU is the figure least disturbed, the one to compare code by.
    plain: dict[str, tuple[float, float]] = {}
    for label, unique in (("miss", True), ("hit", False)):
        for i in range(300):  # warm: URLconf, key, route, model (on a thread's path: the caches fill there)
            one(offset + i, unique, on_loop=False)
        for _ in range(max(args.repeat, 1)):
            cpu, wall = time.thread_time(), time.perf_counter()
            for i in range(args.requests):
                one(offset + 1000 + i, unique)
            sample = ((time.thread_time() - cpu) / args.requests * 1e6, (time.perf_counter() - wall) / args.requests * 1e6)
            if label not in plain or sample[0] < plain[label][0]:
                plain[label] = sample
            offset += 5_000_000
    if args.loop_only:
        print(
            f"Uninstrumented loop, least CPU of {args.repeat} passes of {args.requests} requests (us per request, CPU / wall): "
            f"miss {plain['miss'][0]:.0f} / {plain['miss'][1]:.0f}; hit {plain['hit'][0]:.0f} / {plain['hit'][1]:.0f}"
        )
        return

    # The entry point: the dispatcher (production) against Django's full handler, misses.
    entries = []
    for name, entry in (
        ("platform_site.wsgi.application (dispatcher, production)", application),
        ("Django's WSGIHandler: 12 middleware + URL resolver", WSGIHandler()),
    ):
        handler = entry
        for i in range(100):
            one(offset + i, True)
        cpu, wall = time.thread_time(), time.perf_counter()
        for i in range(args.requests):
            one(offset + 1000 + i, True)
        entries.append(
            (name, (time.thread_time() - cpu) / args.requests * 1e6, (time.perf_counter() - wall) / args.requests * 1e6)
        )
        offset += 5_000_000
    handler = application

    labels = instrument()
    per_case: dict[str, dict[str, tuple[float, float]]] = {}
    for label, unique in (("miss", True), ("hit", False)):
        TOTALS.clear()
        for i in range(args.requests):
            one(offset + i, unique)
        per_case[label] = {name: (v[0] / args.requests * 1e6, v[1] / args.requests * 1e6) for name, v in TOTALS.items()}
        offset += 5_000_000

    profile = cProfile.Profile()
    profile.enable()
    for i in range(min(args.requests, 1000)):
        one(offset + i, True)
    profile.disable()

    bad = [s for s in statuses if not s.startswith("200")]
    if bad:
        raise SystemExit(f"{len(bad)} requests did not answer 200: {bad[:3]}")
    started = time.perf_counter()
    for _ in range(2000):
        ping.ping()
    rtt = (time.perf_counter() - started) / 2000 * 1e6

    print(
        f"Modelhost predict on {args.model}: {args.requests} requests per pass, in one process (no HTTP server), "
        "microseconds per request"
    )
    print(
        f"Uninstrumented loop, least CPU of {args.repeat} passes: miss {plain['miss'][0]:.0f} us CPU / "
        f"{plain['miss'][1]:.0f} us wall; "
        f"hit {plain['hit'][0]:.0f} us CPU / {plain['hit'][1]:.0f} us wall. Redis PING round trip: {rtt:.0f} us wall."
    )
    print()
    print("| step | miss: CPU us | miss: wall us | hit: CPU us | hit: wall us |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in labels:
        miss, hit = per_case["miss"].get(name), per_case["hit"].get(name)
        cells = [f"{miss[0]:.0f}", f"{miss[1]:.0f}"] if miss else ["-", "-"]
        cells += [f"{hit[0]:.0f}", f"{hit[1]:.0f}"] if hit else ["-", "-"]
        print(f"| {name} | {' | '.join(cells)} |")
    print()
    print("Entry point (cache miss, uninstrumented loop):")
    print()
    print("| entry | CPU us per request | wall us per request |")
    print("| --- | ---: | ---: |")
    for name, cpu_us, wall_us in entries:
        print(f"| {name} | {cpu_us:.0f} | {wall_us:.0f} |")
    print()
    print("Top functions by cumulative time under cProfile, cache miss (ranking only):")
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("cumulative").print_stats(40)
    print("\n".join(line for line in stream.getvalue().splitlines() if line.strip()))


if __name__ == "__main__":
    main()
