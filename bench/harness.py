"""What the benchmark scripts share: environments, servers on free ports, wrk, /proc readings.

Every server is started here on a free loopback port, in its own process group, and stopped
(that group only) when the `with` block ends, whatever happened inside it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_VENV = BENCH / ".venv-peers"
SERVERS_VENV = BENCH / ".venv-servers"
APP_VENV = ROOT / ".venv"
RUN = BENCH / ".run"
ARTIFACTS = BENCH / ".artifacts"

# The benchmark's own PostgreSQL database and Redis database index. Two checkouts that run a
# benchmark at once on one machine must each set their own: a run empties its Redis database
# first and counts the records in its database (BENCH_DATABASE=modelhost_bench_2 BENCH_REDIS_DB=12).
DATABASE = os.environ.get("BENCH_DATABASE", "modelhost_bench")
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "13"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


def ensure_peers_python() -> None:
    """Run setup_peers.sh, then re-run this script under the peers' venv (it has numpy, sklearn, mlflow)."""
    here = Path(sys.prefix).resolve()
    if here == PEERS_VENV.resolve():
        return
    subprocess.run([str(BENCH / "setup_peers.sh")], check=True)
    os.execv(str(PEERS_VENV / "bin" / "python"), [str(PEERS_VENV / "bin" / "python"), *sys.argv])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def modelhost_env(**extra: str) -> dict[str, str]:
    """Modelhost's environment in the benchmark: real PostgreSQL and Redis (database 13).

    The web process also gets PROMETHEUS_MULTIPROC_DIR (see `modelhost_web_env`); management
    commands run without it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VIRTUAL_ENV", "CELERY_"))}
    env.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        SECRET_KEY="bench-secret-key-not-for-production-0123456789abcdefghijklmnopqrstuvwxyz",
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",
        MODEL_STORAGE_ROOT=str(RUN / "models"),
        ARTIFACT_CACHE_DIR=str(RUN / "artifact-cache"),
        DJANGO_SETTINGS_MODULE="platform_site.settings",
        LOG_LEVEL="WARNING",
        RUNNER_ADDRESSES=f"unix:{RUNNER_SOCKET}",
    )
    env.update(extra)
    return env


RUNNER_SOCKET = RUN / "run" / "runner.sock"


@contextlib.contextmanager
def runner_host(**extra: str):
    """Modelhost's runner host (the Procfile's `runner`) on RUNNER_SOCKET, as `running` starts servers."""
    import socket as socket_module

    argv = [str(APP_VENV / "bin" / "python"), "-m", "inference.runners.host", "--socket", str(RUNNER_SOCKET)]
    with running("runner-host", argv, env=modelhost_env(**extra), port=0, ready_path=None) as server:
        deadline = time.monotonic() + 120
        while True:
            probe = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
            try:
                probe.connect(str(RUNNER_SOCKET))
                break
            except OSError:
                if server.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"the runner host did not start; see {server.log}:\n{server.log.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.1)
            finally:
                probe.close()
        yield server


def modelhost_web_env(**extra: str) -> dict[str, str]:
    folder = RUN / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    return modelhost_env(PROMETHEUS_MULTIPROC_DIR=str(folder), **extra)


def prepare_database() -> None:
    """Create the bench database if missing and migrate it with the project's venv."""
    exists = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if exists != "1":
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DATABASE], check=True)
    subprocess.run(
        [str(APP_VENV / "bin" / "python"), "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=modelhost_env(), check=True
    )


def build_models() -> None:
    """The benchmark's model files (bench/models.py, in the peers' venv; it skips what is built)."""
    subprocess.run([str(PEERS_VENV / "bin" / "python"), str(BENCH / "models.py")], check=True, stdout=subprocess.DEVNULL)


def seed(which: str) -> dict:
    out = subprocess.run(
        [str(APP_VENV / "bin" / "python"), str(BENCH / "seed_modelhost.py"), which],
        cwd=ROOT,
        env=modelhost_env(),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"seeding Modelhost failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def redis_flush_bench_db() -> None:
    """Empty the benchmark's Redis database (BENCH_REDIS_DB): no cached predictions from a previous run."""
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "-n", str(REDIS_DB), "FLUSHDB"], check=True, capture_output=True
    )


# --- servers ------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen
    log: Path
    notes: dict = field(default_factory=dict)
    # Processes whose CPU counts as this server's (Modelhost's runner host and its runners).
    companions: list[Server] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server's process tree: the master first, then its children."""
        own = [self.process.pid, *descendants(self.process.pid)]
        return own + [pid for companion in self.companions for pid in companion.pids()]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return sorted(out)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's reaped children (wrk), for subtracting it from busy_seconds()."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def redis_server_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and cmdline(int(entry.name)).startswith("redis-server"):
            return int(entry.name)
    return None


def others_cores(exclude: list[int], seconds: float = 1.0) -> float:
    """Cores' worth of CPU used over `seconds` by every process but `exclude` (and this one)."""
    mine = [os.getpid(), *exclude]
    before_all, before_mine = busy_seconds(), sum(cpu_seconds(p) for p in mine)
    time.sleep(seconds)
    return max(0.0, (busy_seconds() - before_all) - (sum(cpu_seconds(p) for p in mine) - before_mine)) / seconds


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size: a forked process's share of the pages it shares with its parent."""
    try:
        for line in (Path("/proc") / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@contextlib.contextmanager
def running(
    name: str,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    ready_path: str | None = "/healthz",
    port: int | None = None,
    timeout: float = 120.0,
) -> Iterator[Server]:
    """Start a server, wait until `ready_path` answers 200 (unless None), yield it, stop its process group."""
    RUN.mkdir(parents=True, exist_ok=True)
    log = RUN / f"{name}.log"
    port = port or free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    handle = log.open("w")
    process = subprocess.Popen(
        argv, cwd=cwd, env=env or dict(os.environ), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(name=name, port=port, process=process, log=log)
    try:
        if ready_path is not None:
            _wait_ready(server, ready_path, timeout)
        yield server
    finally:
        _stop(process)
        handle.close()


def _wait_ready(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(
                f"{server.name} exited with {server.process.returncode} before it was ready; see "
                f"{server.log}:\n{server.log.read_text()[-3000:]}"
            )
        try:
            status, _, _ = request(server.port, "GET", path, timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{server.name} was not ready on {path} after {timeout:.0f}s; see {server.log}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30
) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# --- wrk ---------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors_status: int
    errors_socket: dict
    raw: str

    @property
    def failed(self) -> bool:
        # connect/read errors come from sync workers closing idle keep-alive sockets; status
        # errors (4xx/5xx) and timeouts are failures.
        return self.errors_status > 0 or self.errors_socket.get("timeout", 0) > 0 or self.requests == 0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def run_wrk(*, port: int, script: Path, seconds: int, connections: int = 8, threads: int = 1) -> WrkResult:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise SystemExit(f"wrk failed ({out.returncode}):\n{text}")
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    if done is None:
        raise SystemExit(f"could not read wrk's output:\n{text}")
    percentiles = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, flags=re.M))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    status_errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    seconds_taken = _ms(done.group(2) + done.group(3)) / 1000
    return WrkResult(
        requests=int(done.group(1)),
        seconds=seconds_taken,
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        p50_ms=_ms(percentiles["50"]),
        p90_ms=_ms(percentiles["90"]),
        p99_ms=_ms(percentiles["99"]),
        errors_status=int(status_errors.group(1)) if status_errors else 0,
        errors_socket=dict(zip(("connect", "read", "write", "timeout"), map(int, socket_errors.groups()), strict=True))
        if socket_errors
        else {},
        raw=text,
    )


def lua_script(
    *, path: str, headers: dict[str, str], rows: list[list[float]], batch: int, protocol: str, unique: bool, start: int = 0
) -> str:
    """A wrk script posting `batch` rows per request in `protocol`'s body shape.

    Rows rotate through a pool of real inputs. With `unique`, the first value of each body
    gets extra trailing digits from a per-request counter (5.1 -> 5.1000000123): the input
    stays realistic but no two requests are alike, so every request misses the prediction
    cache. Without it every request sends the same body (the cache-hit run). Give each wrk
    invocation its own `start` (the warm-up and the measured run too), or the second one
    repeats the first one's inputs.
    """
    firsts = ",".join(f'"{row[0]!r}"' for row in rows)
    rests = ",".join('"' + "".join("," + repr(v) for v in row[1:]) + '"' for row in rows)
    head_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    return f"""
wrk.method = "POST"
{head_lines}
local firsts = {{{firsts}}}
local rests = {{{rests}}}
local n = #firsts
local batch = {batch}
local width = {len(rows[0])}
local unique = {"true" if unique else "false"}
local protocol = "{protocol}"
local counter = {start}
local concat = table.concat

local function body_for(c)
  local out = {{}}
  for i = 0, batch - 1 do
    local k = ((c + i) % n) + 1
    local first = firsts[k]
    if i == 0 and unique then first = first .. string.format("%09d", c) end
    out[#out + 1] = first .. rests[k]
  end
  if protocol == "v2" then
    return '{{"inputs":[{{"name":"input-0","shape":[' .. batch .. ',' .. width .. '],"datatype":"FP64","data":['
      .. concat(out, ",") .. ']}}]}}'
  end
  return '{{"inputs":[[' .. concat(out, "],[") .. ']]}}'
end

-- Made on the first call, not at load: wrk adds the Host header after loading the script.
local fixed = nil

request = function()
  if not unique then
    if fixed == nil then fixed = wrk.format(nil, "{path}", nil, body_for(0)) end
    return fixed
  end
  counter = counter + 1
  return wrk.format(nil, "{path}", nil, body_for(counter))
end
"""


def body_for(*, rows: list[list[float]], protocol: str) -> bytes:
    """The same body shape the wrk script sends, for the correctness probes."""
    if protocol == "v2":
        data = [v for row in rows for v in row]
        return json.dumps(
            {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": data}]}
        ).encode()
    return json.dumps({"inputs": rows}).encode()


def predictions_from(*, protocol: str, payload: dict) -> list:
    if protocol == "v2":
        return payload["outputs"][0]["data"]
    return payload["predictions"]
