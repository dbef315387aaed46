"""A bounded soak: the three protocols at a moderate rate, with bad inputs and feedback mixed in.

    python3 bench/soak.py [--minutes 10] [--rate 40] [--threads 4]

With another checkout benchmarking on the same machine, give this run its own database and
Redis index: BENCH_DATABASE=modelhost_bench_soak BENCH_REDIS_DB=12 python3 bench/soak.py.

Starts Modelhost as the Procfile runs it (the runner host and the web under granian, 2
workers) against the benchmark's PostgreSQL and Redis, seeds the benchmark organization (an
iris LogisticRegression, predicted in the web, and a RandomForest, predicted in the runner),
and sends requests for `--minutes` at about `--rate` per second from `--threads` threads:
native JSON, Open Inference Protocol V2 and MLflow `/invocations` in turn, to iris three times
in four and to the forest once, one in ten with a string where a number belongs (a 400 the
platform must record), and feedback on a quarter of the answered native iris predictions.
The request loop is bounded in count and time and stops by itself.

Prints, at the end: requests by protocol and status, errors that should not happen (any 5xx,
any transport error), prediction records sent (every prediction request that reached its
model: 200s and 400s) against records stored in PostgreSQL after the drain (must be equal),
feedback accepted, and the web workers' and the runners' memory at the start and the end.
Writes bench/.run/soak-<time>.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import APP_VENV, BENCH, ROOT, RUN  # noqa: E402

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3], [5.8, 2.7, 5.1, 1.9]]
PROTOCOLS = ("native", "v2", "mlflow")
FEEDBACK_AFTER_SECONDS = 5.0


def rf_rows() -> list[list[float]]:
    """Real inputs of the forest (20 features), written by bench/models.py."""
    return json.loads((harness.ARTIFACTS / "rf.rows.json").read_text())[:200]


def memory(web: harness.Server, runners: harness.Server) -> dict:
    workers = harness.descendants(web.process.pid)
    runner_pids = harness.descendants(runners.process.pid)
    return {
        "web_workers_rss_mb": [round(harness.rss_mb(pid), 1) for pid in workers],
        "runner_host_pss_mb": round(harness.pss_mb(runners.process.pid), 1),
        "runners": len(runner_pids),
        "runners_pss_mb": round(sum(harness.pss_mb(pid) for pid in runner_pids), 1),
    }


def stored_records(since: float) -> int:
    code = (
        "from inference.models import PredictionRecord; from datetime import datetime, timezone; "
        "print(PredictionRecord.objects.filter(organization__slug='bench', "
        f"created_at__gte=datetime.fromtimestamp({since}, tz=timezone.utc)).count())"
    )
    out = subprocess.run(
        [str(APP_VENV / "bin" / "python"), "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=harness.modelhost_env(),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"counting the stored records failed:\n{out.stderr[-3000:]}")
    return int(out.stdout.strip().splitlines()[-1])


def drain() -> int:
    out = subprocess.run(
        [str(APP_VENV / "bin" / "python"), str(BENCH / "drain_records.py")],
        cwd=ROOT,
        env=harness.modelhost_env(),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"draining the prediction records failed:\n{out.stderr[-3000:]}")
    return int(out.stdout.strip().splitlines()[-1])


class Soak:
    def __init__(self, *, port: int, key: str, rate: float, deadline: float, max_requests: int) -> None:
        self.port, self.key, self.rate, self.deadline, self.max_requests = port, key, rate, deadline, max_requests
        self.lock = threading.Lock()
        self.sent = 0
        self.statuses: collections.Counter = collections.Counter()
        self.unexpected: list[str] = []
        self.records_expected = 0
        self.feedback: collections.Counter = collections.Counter()
        self.rf_rows = rf_rows()
        self.feedback_due: collections.deque = collections.deque()  # (due, prediction id, label), shared

    def next_number(self) -> int | None:
        with self.lock:
            if self.sent >= self.max_requests or time.monotonic() > self.deadline:
                return None
            self.sent += 1
            return self.sent

    def request(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        headers = {"X-API-Key": self.key, "Content-Type": "application/json"}
        status, _, payload = harness.request(self.port, method, path, body=json.dumps(body).encode(), headers=headers, timeout=30)
        try:
            return status, json.loads(payload) if payload else {}
        except ValueError:
            return status, {"raw": payload[:200].decode("latin-1")}

    def one(self, number: int, rng: random.Random) -> None:
        # A quarter to the forest (its runner), the rest to iris (the web); the protocols in turn,
        # so every model meets every protocol (4 and 3 have no common factor).
        model = "rf" if number % 4 == 0 else "iris"
        protocol = PROTOCOLS[number % 3]
        pool = self.rf_rows if model == "rf" else IRIS_ROWS
        row = [value + rng.random() / 100 for value in rng.choice(pool)]  # distinct: cache misses
        bad = number % 10 == 0
        if bad:
            row[1] = "wide"
        if protocol == "native":
            path, body = f"/api/v1/models/bench/{model}/predict", {"inputs": [row]}
        elif protocol == "v2":
            path = f"/v2/models/{model}/infer"
            body = {"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "BYTES" if bad else "FP64", "data": row}]}
        else:
            path, body = f"/api/v1/models/bench/{model}/invocations", {"inputs": [row]}
        try:
            status, payload = self.request("POST", path, body)
        except OSError as exc:
            with self.lock:
                self.unexpected.append(f"{protocol} {model}: {type(exc).__name__}: {exc}")
            return
        with self.lock:
            self.statuses[(protocol, status)] += 1
            if status in (200, 400):
                self.records_expected += 1
            if status >= 500 or status not in (200, 400):
                self.unexpected.append(f"{protocol} {model}: {status} {str(payload)[:200]}")
        prediction_id = payload.get("id") if protocol == "native" and status == 200 else None
        if prediction_id and model == "iris" and rng.random() < 0.25:  # about one in twenty requests
            # Sent FEEDBACK_AFTER_SECONDS later, as a client learns the outcome: by then the
            # ingestion (drain_records.py --loop, as the ingest worker) has stored the record.
            self.feedback_due.append((time.monotonic() + FEEDBACK_AFTER_SECONDS, prediction_id, payload["predictions"][0]))

    def send_feedback(self, *, all_of_it: bool = False) -> None:
        while True:
            with self.lock:
                if not self.feedback_due or not (all_of_it or self.feedback_due[0][0] <= time.monotonic()):
                    return
                due, prediction_id, label = self.feedback_due.popleft()
            time.sleep(max(0.0, due - time.monotonic()))
            status, payload = self.request("POST", f"/api/v1/predictions/{prediction_id}/feedback", {"label": label})
            with self.lock:
                self.feedback[status] += 1
                if status != 201:  # the prediction's record must be stored by now
                    self.unexpected.append(f"feedback: {status} {str(payload)[:200]}")

    def run_thread(self, seed: int, threads: int) -> None:
        rng = random.Random(seed)
        interval = threads / self.rate
        next_at = time.monotonic()
        while (number := self.next_number()) is not None:
            self.one(number, rng)
            self.send_feedback()
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, all threads together")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    harness.build_models()
    harness.prepare_database()
    key = harness.seed("inference")["orgs"]["bench"]["key"]
    harness.redis_flush_bench_db()
    drain()
    report: dict = {"minutes": args.minutes, "rate": args.rate, "threads": args.threads}
    with contextlib.ExitStack() as stack:
        runner_host = stack.enter_context(harness.runner_host())
        # The ingest worker's part: records reach PostgreSQL while the soak runs (feedback needs them).
        stack.enter_context(
            harness.running(
                "soak-drain",
                [str(APP_VENV / "bin" / "python"), str(BENCH / "drain_records.py"), "--loop"],
                env=harness.modelhost_env(),
                port=0,
                ready_path=None,
            )
        )
        port = harness.free_port()
        env = harness.modelhost_web_env(HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="2")
        web = stack.enter_context(
            harness.running("modelhost-soak", [str(APP_VENV / "bin" / "python"), "-m", "platform_site.serve"], env=env, port=port)
        )
        started_at = time.time()
        soak = Soak(
            port=port,
            key=key,
            rate=args.rate,
            deadline=time.monotonic() + args.minutes * 60,
            max_requests=int(args.rate * args.minutes * 60 * 1.1) + 10,
        )
        soak.one(1, random.Random(0))  # warm both paths before the first memory reading
        soak.one(3, random.Random(0))
        report["memory_start"] = memory(web, runner_host)
        threads = [threading.Thread(target=soak.run_thread, args=(seed, args.threads)) for seed in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        soak.send_feedback(all_of_it=True)
        report["memory_end"] = memory(web, runner_host)
        time.sleep(1.0)  # the last records leave with the next round trip, or within ~200 ms
    drain()
    stored = stored_records(started_at - 1)
    report.update(
        requests=soak.sent,
        statuses={f"{protocol} {status}": count for (protocol, status), count in sorted(soak.statuses.items())},
        unexpected=soak.unexpected[:50],
        unexpected_count=len(soak.unexpected),
        records_sent=soak.records_expected,
        records_stored=stored,
        feedback={str(k): v for k, v in soak.feedback.items()},
    )
    print(json.dumps(report, indent=1))
    verdict = "equal" if stored == soak.records_expected else "**NOT equal**"
    print(
        f"\n{soak.sent} requests in {args.minutes:g} min; unexpected answers: {len(soak.unexpected)}; records sent "
        f"{soak.records_expected}, stored {stored} ({verdict})"
    )
    out = RUN / f"soak-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"raw figures in {out.relative_to(harness.ROOT)}")
    if soak.unexpected or stored != soak.records_expected:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
