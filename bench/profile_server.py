"""Where a Modelhost web worker spends its time under load: py-spy on the real server.

    python3 bench/profile_server.py [--seconds 10] [--model iris] [--kind one|hit|batch] [--top 40] [--gil]

bench/profile_hotpath.py times the steps in one process without HTTP. This starts the web
process as the Procfile runs it (granian, 2 workers), loads it with the benchmark's wrk
script (8 connections, cache misses by default), and samples one worker with py-spy
(`--idle` off, so waiting on a socket is not counted; `--native` off). It prints the functions
by their own samples and by inclusive samples, and writes the raw py-spy output next to the
benchmark's runs (bench/.run/profile-<time>.txt, speedscope JSON beside it).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import inference_bench as bench  # noqa: E402
from harness import PEERS_VENV, RUN  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--model", default="iris", choices=["iris", "rf"])
    parser.add_argument("--kind", default="one", choices=["one", "hit", "batch"])
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL (py-spy --gil)")
    args = parser.parse_args()
    harness.ensure_peers_python()
    seeded = bench.prepare()
    key = seeded["orgs"]["bench"]["key"]
    case = next(c for c in bench.modelhost_cases(key) if c.model == args.model and c.kind == args.kind)
    RUN.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = RUN / f"profile-{stamp}.txt"
    with bench.start_modelhost() as server:
        bench.probe(server, case)
        harness.run_wrk(port=server.port, script=bench.wrk_script(case, "warmup"), seconds=3)
        workers = harness.descendants(server.process.pid)
        worker = max(workers, key=harness.cpu_seconds)
        load = threading.Thread(
            target=harness.run_wrk,
            kwargs={"port": server.port, "script": bench.wrk_script(case, "run"), "seconds": args.seconds + 2},
        )
        load.start()
        time.sleep(1)
        subprocess.run(
            [
                str(PEERS_VENV / "bin" / "py-spy"),
                "record",
                "--pid",
                str(worker),
                "--duration",
                str(args.seconds),
                "--rate",
                "1000",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
                *(["--gil"] if args.gil else []),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        load.join()
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples of worker {worker}, {args.model} {case.label}, {args.seconds}s under wrk -c8; raw stacks: {raw}\n")
    print("| own % | function |\n| ---: | --- |")
    for frame, n in own.most_common(args.top):
        print(f"| {100 * n / total:.1f} | {frame} |")
    print("\n| inclusive % | function |\n| ---: | --- |")
    for frame, n in inclusive.most_common(args.top):
        print(f"| {100 * n / total:.1f} | {frame} |")


if __name__ == "__main__":
    main()
