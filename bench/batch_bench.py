"""Batch scoring: a Modelhost batch job vs `mlflow models predict` vs the one-process floor.

    .venv/bin/python bench/batch_bench.py                 # both files, 1 000 000 rows each
    .venv/bin/python bench/batch_bench.py --only iris --rows 200000 --repeat 3

Two files, two models, trained here with bench/models.py's recipe:
    iris  4 features, LogisticRegression (fitted on an array): per-row overhead dominates
    rf    20 numeric features, RandomForestClassifier(n_estimators=100): predict dominates

The three contenders run back to back on the same CSV file and the same fitted model:
    modelhost  the real platform: granian (2 workers), one Celery worker with two pool
               processes (`--concurrency 2`, as the Procfile runs it), PostgreSQL, Redis
               (database 12), local model storage. Timed from the first byte of the multipart
               upload to the last byte of the downloaded result (the input rows with a
               prediction column): upload, split, chunks, assembly, download.
    mlflow     `mlflow models predict -t csv --env-manager local` (mlflow 3.17.2 from
               bench/.venv-peers, or /tmp/batch-peers made here), on the model saved with
               mlflow.sklearn; timed as a whole command, start-up included.
    floor      one process: pandas.read_csv, predict, add the prediction column, to_csv, i.e.
               the same output file as Modelhost's. Timed inside the process from before the
               model load to after to_csv (interpreter start and imports excluded: the
               stricter bar); the wall time with start-up is printed too.

Peak memory is VmHWM (peak resident set) of every process: the Celery main process and its
two pool processes, the web workers, and the mlflow and floor processes (from wait4).
The Celery worker is restarted before each Modelhost run so each peak belongs to one run;
start-up is not timed (the worker is a running service), the model's first load is.
Every run's predictions are checked against the floor's.

The machine may be shared: run the three back to back (the script does) and compare ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402

ART = BENCH / ".artifacts" / "batch"
PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"
DATABASE = "batch_bench"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
REDIS_URL = "redis://127.0.0.1:6379/12"
MLFLOW_VERSION = "3.17.2"

FLOOR = r"""
import sys, time, joblib, pandas as pd
import sklearn.ensemble, sklearn.linear_model  # imported before the clock starts, as a service would have them
started = time.perf_counter()
model = joblib.load(sys.argv[1])
frame = pd.read_csv(sys.argv[2])
frame["prediction"] = model.predict(frame.to_numpy())
frame.to_csv(sys.argv[3], index=False)
print(time.perf_counter() - started)
"""

# For reference only: the same read and predict, writing the prediction column alone (what
# `mlflow models predict` writes), not the input rows the batch result carries.
FLOOR_PREDICTIONS_ONLY = FLOOR.replace(
    'frame["prediction"] = model.predict(frame.to_numpy())\nframe.to_csv(sys.argv[3], index=False)',
    'pd.DataFrame({"prediction": model.predict(frame.to_numpy())}).to_csv(sys.argv[3], index=False)',
)

SAVE_MLFLOW = r"""
import sys, joblib, numpy as np, mlflow.sklearn
from mlflow.models import infer_signature
model = joblib.load(sys.argv[1])
x = np.load(sys.argv[2])
# mlflow 3 saves with skops; the tree node storage is a type we trust ourselves (as bench/models.py does).
mlflow.sklearn.save_model(model, sys.argv[3], signature=infer_signature(x[:5], model.predict(x[:5])),
                          skops_trusted_types=["sklearn.tree._tree.Tree"])
"""


# ------------------------------------------------------------------------------ preparation


def log(message: str) -> None:
    print(f"[batch_bench] {message}", file=sys.stderr, flush=True)


def peers_python() -> Path:
    """bench/.venv-peers (bench/setup_peers.sh) if there, else /tmp/batch-peers with mlflow and our scikit-learn."""
    shared = BENCH / ".venv-peers" / "bin" / "python"
    if shared.exists():
        return shared
    own = Path("/tmp/batch-peers")
    if not (own / "bin" / "mlflow").exists():
        pins = [
            line.strip()
            for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.startswith(("scikit-learn==", "numpy==", "pandas==", "scipy==", "joblib=="))
        ]
        log(f"making {own} with mlflow=={MLFLOW_VERSION} and {', '.join(pins)}")
        subprocess.run([sys.executable, "-m", "venv", str(own)], check=True)
        subprocess.run(
            [str(own / "bin" / "python"), "-m", "pip", "install", "-q", f"mlflow=={MLFLOW_VERSION}", *pins], check=True
        )
    return own / "bin" / "python"


def build_artifacts(rows: int) -> dict[str, dict]:
    """Models (joblib + MLflow folder) and CSV files, made once per row count."""
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_iris, make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    ART.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("iris", "rf"):
        model_path, mlflow_dir, csv_path = ART / f"{name}.joblib", ART / "mlflow" / name, ART / f"{name}-{rows}.csv"
        if not model_path.exists() or not mlflow_dir.exists():
            if name == "iris":
                x, y = load_iris(return_X_y=True)
                model = LogisticRegression(max_iter=1000).fit(x, y)
            else:
                x, y = make_classification(n_samples=2000, n_features=20, n_informative=10, random_state=0)
                model = RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y)
            joblib.dump(model, model_path)
            np.save(ART / f"{name}-train.npy", x)
            shutil.rmtree(mlflow_dir, ignore_errors=True)
            mlflow_dir.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [str(peers_python()), "-c", SAVE_MLFLOW, str(model_path), str(ART / f"{name}-train.npy"), str(mlflow_dir)],
                check=True,
            )
        if not csv_path.exists():
            log(f"writing {csv_path.name}")
            rng = np.random.default_rng(1)
            if name == "iris":
                x, _ = load_iris(return_X_y=True)
                data = np.round(x[rng.integers(0, len(x), rows)] + rng.normal(scale=0.2, size=(rows, 4)), 2)
                frame = pd.DataFrame(data, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
                frame.to_csv(csv_path, index=False, float_format="%.2f")
            else:
                data, _ = make_classification(n_samples=rows, n_features=20, n_informative=10, random_state=1)
                pd.DataFrame(data, columns=[f"f{i}" for i in range(20)]).to_csv(csv_path, index=False, float_format="%.6f")
        out[name] = {"model": model_path, "mlflow": mlflow_dir, "csv": csv_path, "rows": rows}
    return out


def modelhost_env(**extra: str) -> dict[str, str]:
    """The benchmark's Modelhost environment (bench/harness.py) on this run's database and Redis."""
    return harness.modelhost_env(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        MODEL_STORAGE_ROOT=str(ART / "storage"),
        ARTIFACT_CACHE_DIR=str(ART / "artifact-cache"),
        **extra,
    )


def prepare_modelhost(artifacts: dict) -> dict:
    """A fresh database, migrated and seeded: one organization, a predict key, the two models."""
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DATABASE], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DATABASE], check=True)
    shutil.rmtree(ART / "storage", ignore_errors=True)
    subprocess.run([str(PROJECT_PYTHON), "manage.py", "migrate", "-v0"], cwd=ROOT, env=modelhost_env(), check=True)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    seeded = subprocess.run(
        [str(PROJECT_PYTHON), __file__, "--seed", json.dumps({k: str(v["model"]) for k, v in artifacts.items()})],
        cwd=ROOT,
        env=modelhost_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(seeded.stdout.strip().splitlines()[-1])


def seed(models: dict[str, str]) -> None:
    """Runs inside Django (the --seed mode): upload each model through the real upload path."""
    import django

    sys.path.insert(0, str(ROOT))
    django.setup()
    from django.core.files.uploadedfile import SimpleUploadedFile

    from accounts import services as account_services
    from accounts.models import Membership, Organization, Role, User
    from accounts.principals import Caller
    from registry import services as registry_services

    user = User.objects.create_user(email="batch-bench@modelhost.local", password=secrets.token_urlsafe(16), name="Batch bench")
    caller = Caller(user=user)
    org = account_services.create_organization(caller=caller, name="batchbench", slug="batchbench")
    Membership.objects.get_or_create(user=user, organization=org, defaults={"role": Role.OWNER})
    Organization.objects.filter(pk=org.pk).update(rate_limit_per_minute=1_000_000_000, monthly_quota=0)
    _, key = account_services.create_api_key(caller=caller, organization=org, name="batch bench", scopes=["predict", "read"])
    for name, path in models.items():
        model = registry_services.create_model(caller=caller, organization=org, name=name)
        version = registry_services.upload_version(
            caller=caller, model=model, file=SimpleUploadedFile(f"{name}.joblib", Path(path).read_bytes())
        )
        registry_services.set_stage(caller=caller, version=version, stage="production")
    print(json.dumps({"key": key, "org": org.slug}))


# ------------------------------------------------------------------------------ processes


def descendants(pid: int) -> list[int]:
    found = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found.append(child)
        found.extend(descendants(child))
    return found


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(argv: list[str], log_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until(check, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ contenders


def post_file(port: int, path: str, key: str, csv_path: Path) -> dict:
    """A streamed multipart upload: the file is sent in 1 MiB blocks, never read whole."""
    boundary = "batchbench" + secrets.token_hex(8)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{csv_path.name}"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.putrequest("POST", path)
    connection.putheader("Authorization", f"Bearer {key}")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    connection.putheader("Content-Length", str(len(head) + csv_path.stat().st_size + len(tail)))
    connection.endheaders()
    connection.send(head)
    with open(csv_path, "rb") as handle:
        while block := handle.read(1024 * 1024):
            connection.send(block)
    connection.send(tail)
    response = connection.getresponse()
    body = response.read()
    if response.status != 202:
        raise SystemExit(f"submission answered {response.status}: {body[:500]!r}")
    return json.loads(body)


def get_json(port: int, path: str, key: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def download(port: int, path: str, key: str, target: Path) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=600) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, 1024 * 1024)


def run_modelhost(name: str, spec: dict, *, seeded: dict, port: int, out: Path) -> dict:
    env = modelhost_env()
    worker = start(
        [
            str(ROOT / ".venv" / "bin" / "celery"),
            "--app",
            "platform_site",
            "worker",
            "--queues",
            "batch,default",
            "--concurrency",
            "2",
            "-n",
            "batchbench@%h",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        ART / "worker.log",
        env,
    )
    try:
        wait_until(lambda: b" ready." in (ART / "worker.log").read_bytes(), timeout=120, what="the Celery worker")
        pool = descendants(worker.pid)
        idle = {pid: rss_mb(pid) for pid in [worker.pid, *pool]}
        key = seeded["key"]
        started = time.perf_counter()
        job = post_file(port, f"/api/v1/models/{seeded['org']}/{name}/batch-jobs", key, spec["csv"])
        accepted = time.perf_counter()
        while job["status"] in ("queued", "running"):
            time.sleep(0.05)
            job = get_json(port, f"/api/v1/batch-jobs/{job['id']}", key)
        if job["status"] != "succeeded":
            raise SystemExit(f"the job ended {job['status']}: {job['error']}")
        scored = time.perf_counter()
        download(port, job["result"], key, out)
        finished = time.perf_counter()
        peaks = {"celery main": peak_rss_mb(worker.pid)}
        for i, pid in enumerate(pool, start=1):
            peaks[f"celery pool {i}"] = peak_rss_mb(pid)
        return {
            "seconds": finished - started,
            "phases": {"upload": accepted - started, "queue+score": scored - accepted, "download": finished - scored},
            "peaks_mb": peaks,
            "idle_mb": {
                ("celery main" if pid == worker.pid else f"celery pool {pool.index(pid) + 1}"): mb for pid, mb in idle.items()
            },
            "chunks": job["chunks_total"],
        }
    finally:
        stop(worker)


def timed_child(argv: list[str], env: dict | None = None) -> tuple[float, dict[str, float], str]:
    """Wall seconds, peak RSS (MB) of each process of the child's tree, and the child's stdout.

    Peaks are VmHWM sampled every 20 ms (a high-water mark, so a sample taken after the peak
    holds it). rusage's ru_maxrss would count the pre-exec copy of this process.
    """
    import threading

    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peaks: dict[int, tuple[str, float]] = {}

    def sample() -> None:
        while process.poll() is None:
            for pid in [process.pid, *descendants(process.pid)]:
                try:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    peaks[pid] = (name, max(peaks.get(pid, ("", 0.0))[1], peak_rss_mb(pid)))
                except OSError:
                    pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({process.returncode}):\n{stderr.decode()[-3000:]}")
    big = {pid: (name, mb) for pid, (name, mb) in peaks.items() if mb >= 20}  # not `uname` and the like
    by_process = {f"{name} (pid {pid})" if len(big) > 1 else name: mb for pid, (name, mb) in big.items()}
    return seconds, by_process, stdout.decode()


def run_mlflow(spec: dict, *, peers: Path, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VIRTUAL_ENV"))}
    env["MLFLOW_TRACKING_URI"] = f"file://{ART / 'mlruns'}"
    mlflow = peers.parent / "mlflow"
    seconds, peaks, _ = timed_child(
        [
            str(mlflow),
            "models",
            "predict",
            "-m",
            str(spec["mlflow"]),
            "-i",
            str(spec["csv"]),
            "-t",
            "csv",
            "-o",
            str(out),
            "--env-manager",
            "local",
        ],
        env=env,
    )
    return {"seconds": seconds, "peaks_mb": peaks}


def run_floor(spec: dict, *, out: Path, predictions_only: bool = False) -> dict:
    code = FLOOR_PREDICTIONS_ONLY if predictions_only else FLOOR
    seconds, peaks, inner = timed_child([str(PROJECT_PYTHON), "-c", code, str(spec["model"]), str(spec["csv"]), str(out)])
    return {"seconds": seconds, "inner_seconds": float(inner.strip()), "peaks_mb": {"floor": max(peaks.values())}}


def predictions_of(path: Path, kind: str):
    import numpy as np
    import pandas as pd

    if kind == "mlflow":
        text = path.read_text()
        payload = (
            json.loads(text)
            if text.lstrip().startswith("{")
            else {"predictions": [json.loads(line) for line in text.splitlines() if line]}
        )
        values = payload["predictions"] if isinstance(payload, dict) else payload
        return np.asarray([v if not isinstance(v, dict) else next(iter(v.values())) for v in values])
    return pd.read_csv(path, usecols=["prediction"])["prediction"].to_numpy()


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["iris", "rf"])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each contender, back to back (the median is reported)")
    parser.add_argument("--seed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed:
        seed(json.loads(args.seed))
        return

    peers = peers_python()
    artifacts = build_artifacts(args.rows)
    names = [args.only] if args.only else ["iris", "rf"]
    log("preparing Modelhost (database batch_bench, Redis db 12)")
    seeded = prepare_modelhost({name: artifacts[name] for name in names})
    port = free_port()
    web = start(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "platform_site.serve"],
        ART / "web.log",
        modelhost_env(HOST="127.0.0.1", PORT=str(port)),
    )
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200,
            timeout=60,
            what="the web server",
        )
        for name in names:
            spec = artifacts[name]
            results[name] = {"modelhost": [], "mlflow": [], "floor": [], "floor, predictions only": []}
            outs = {
                c: ART / f"out-{name}-{c.split(',')[0]}{'-preds' if ',' in c else ''}.{'json' if c == 'mlflow' else 'csv'}"
                for c in results[name]
            }
            for attempt in range(args.repeat):
                log(f"{name} run {attempt + 1}/{args.repeat}: floor")
                results[name]["floor"].append(run_floor(spec, out=outs["floor"]))
                results[name]["floor, predictions only"].append(
                    run_floor(spec, out=outs["floor, predictions only"], predictions_only=True)
                )
                log(f"{name} run {attempt + 1}/{args.repeat}: mlflow models predict")
                results[name]["mlflow"].append(run_mlflow(spec, peers=peers, out=outs["mlflow"]))
                log(f"{name} run {attempt + 1}/{args.repeat}: modelhost batch job")
                results[name]["modelhost"].append(run_modelhost(name, spec, seeded=seeded, port=port, out=outs["modelhost"]))
            import numpy as np

            reference = predictions_of(outs["floor"], "floor")
            for contender in ("modelhost", "mlflow", "floor, predictions only"):
                got = predictions_of(outs[contender], contender)
                same = len(got) == len(reference) and bool(np.array_equal(got.astype(reference.dtype), reference))
                results[name][contender][-1]["same_predictions_as_floor"] = same
            web_peaks = {f"web worker {i}": peak_rss_mb(pid) for i, pid in enumerate(descendants(web.pid), start=1)}
            results[name]["modelhost"][-1]["peaks_mb"].update(web_peaks)
    finally:
        stop(web)
    report(results, args)


def report(results: dict, args) -> None:
    print(
        f"\nBatch scoring, {args.rows:,} rows per file, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"command: .venv/bin/python bench/batch_bench.py --rows {args.rows} --repeat {args.repeat}"
        + (f" --only {args.only}" if args.only else "")
    )
    print()
    print(
        f"| file | contender | seconds (median of {args.repeat}) | rows/s | vs floor | vs mlflow | peak RSS MB (per "
        "process) | same predictions |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    for name, by in results.items():
        median = {c: statistics.median(r["seconds"] for r in runs) for c, runs in by.items()}
        # The floor is timed inside its process (after the imports): the stricter bar.
        for floor in ("floor", "floor, predictions only"):
            median[floor] = statistics.median(r["inner_seconds"] for r in by[floor])
        rows = args.rows
        for contender in ("modelhost", "mlflow", "floor", "floor, predictions only"):
            last = by[contender][-1]
            peaks = ", ".join(f"{k} {v:.0f}" for k, v in last["peaks_mb"].items())
            same = last.get("same_predictions_as_floor", "reference")
            print(
                f"| {name} | {contender} | {median[contender]:.2f} | {rows / median[contender]:,.0f} | "
                f"{median['floor'] / median[contender]:.2f}x "
                f"| {median['mlflow'] / median[contender]:.2f}x | {peaks} | {same} |"
            )
    print()
    for name, by in results.items():
        modelhost = statistics.median(r["seconds"] for r in by["modelhost"])
        preds_only = statistics.median(r["inner_seconds"] for r in by["floor, predictions only"])
        print(f"{name}: modelhost is {preds_only / modelhost:.2f}x the rows/s of a floor that writes the predictions alone")
        for run in by["modelhost"]:
            phases = ", ".join(f"{k} {v:.2f}s" for k, v in run["phases"].items())
            idle = ", ".join(f"{k} {v:.0f}" for k, v in run["idle_mb"].items())
            print(f"{name} modelhost phases: {phases}; {run['chunks']} chunks; RSS before the job (MB): {idle}")
        for run in by["floor"]:
            print(f"{name} floor: {run['inner_seconds']:.2f}s inside the process, {run['seconds']:.2f}s with interpreter start")
    json.dump(results, open(ART / "last-results.json", "w"), indent=2, default=str)


if __name__ == "__main__":
    main()
