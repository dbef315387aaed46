"""How long `make run` takes to start: the first time on an empty var/ folder, then again.

    python3 bench/start_bench.py [--starts 2] [--keep]

Runs scripts/run.sh (what `make run` runs once the virtualenv is installed) with VAR_DIR set to
bench/.run/start-var, emptied first (--keep: not emptied, so every start is a later one), on a
free port, with DATABASE_URL and REDIS_URL unset (the embedded default: SQLite and the
embedded Redis). Each start is timed until the login page answers 200, and until every process
has said it is ready (both web workers, the three Celery workers, beat, the runner host); its
output is kept with the second each line appeared, so a slow step shows. Then Ctrl-C (SIGINT
to the process group, as a terminal sends it) and a wait for everything to stop. The
virtualenv's own install (the first `make run` on a fresh machine) is not included: see `make install`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, RUN, free_port

VAR = RUN / "start-var"
# A line each process prints once it serves (the web's workers: both).
READY = (
    "ingest@",
    "analytics@",
    "batch@",
    "runner host: ready",
    "beat: Starting",
    "Started worker-1 runtime",
    "Started worker-2 runtime",
)


def all_ready_at(lines: list[tuple[float, str]]) -> float | None:
    seen = {}
    for seconds, text in lines:
        for mark in READY:
            if mark in text and (not mark.endswith("@") or text.rstrip().endswith("ready.")):
                seen.setdefault(mark, seconds)
    return max(seen.values()) if len(seen) == len(READY) else None


def start_once(port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "VIRTUAL_ENV")}
    env.update(PORT=str(port), VAR_DIR=str(VAR), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    process = subprocess.Popen(
        ["scripts/run.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in process.stdout:
            lines.append((round(time.monotonic() - started, 2), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    login = None
    try:
        while time.monotonic() - started < 600:
            if process.poll() is not None:
                raise SystemExit(
                    f"scripts/run.sh exited with {process.returncode}:\n" + "\n".join(text for _, text in lines[-40:])
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=2) as response:
                    if response.status == 200:
                        login = time.monotonic() - started
                        break
            except OSError:
                pass
            time.sleep(0.1)
        if login is None:
            raise SystemExit("the login page did not answer within 10 minutes")
        while all_ready_at(lines) is None and time.monotonic() - started < 600 and process.poll() is None:
            time.sleep(0.2)
    finally:
        interrupted = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=5)
    stopped = time.monotonic() - interrupted
    return {
        "login_page_seconds": round(login, 2),
        "all_ready_seconds": all_ready_at(lines),
        "stop_seconds": round(stopped, 2),
        "output": lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep bench/.run/start-var: every start is a later one")
    args = parser.parse_args()
    if not args.keep:
        shutil.rmtree(VAR, ignore_errors=True)
    VAR.mkdir(parents=True, exist_ok=True)
    results = []
    for number in range(args.starts):
        result = start_once(free_port())
        results.append(result)
        print(
            f"start {number + 1}: login page after {result['login_page_seconds']} s, every process ready after "
            f"{result['all_ready_seconds']} s (stopped {result['stop_seconds']} s after)",
            flush=True,
        )
        for seconds, text in result["output"]:
            if not text.startswith(" "):
                print(f"  {seconds:7.2f}  {text[:150]}")
    out = RUN / f"start-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps([[r["login_page_seconds"], r["all_ready_seconds"]] for r in results]))
    print(f"raw output in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
