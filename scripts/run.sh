#!/usr/bin/env bash
# `make run`: migrate, seed the demo account, then run the Procfile's web, workers and beat.
# With DATABASE_URL/REDIS_URL unset: SQLite, a file cache and a filesystem Celery broker.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBUG="${DEBUG:-true}"
export PORT="${PORT:-8000}"
export HOST="${HOST:-127.0.0.1}"
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-$PWD/var/prometheus}"
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p var/broker/queue var/broker/processed var/cache "$PROMETHEUS_MULTIPROC_DIR"
python manage.py migrate --noinput -v0
python manage.py seed_demo
echo "Starting web (http://$HOST:$PORT), the ingest, analytics and batch workers and beat. Ctrl-C stops all of them."
exec honcho start --no-prefix --port "$PORT" web worker-ingest worker-analytics worker-batch beat
