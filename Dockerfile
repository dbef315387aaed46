# syntax=docker/dockerfile:1.7
#
# One image for every Modelhost process named in the Procfile. The default command is
# `web`; docker-compose.yml and kubernetes/ run the same image with the `worker`, `beat`,
# `release` and `runner` commands. deploy_tests/test_dockerfile.py keeps these commands
# equal to the Procfile's. The runner host alone is started as root (with three
# capabilities, to confine each organization's runners) and holds none of the settings
# the other processes get: docs/operations.md, "Runners and isolation".
#
# Build:  docker build -t modelhost:local .
# Needs BuildKit (the default builder since Docker 23) for the bind mount below.

# A patch-level tag, so a rebuild does not silently move to another Python; production
# builds can add the digest (python:3.11.15-slim-bookworm@sha256:...), see
# docs/operations.md.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

# --- builder: every dependency as a wheel; compilers stay out of the shipped image ------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Only for a pinned dependency that publishes no wheel for this platform. Not pinned to a
# Debian revision: bookworm's point releases replace them, and this stage is not shipped.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY requirements.txt .
RUN pip wheel --wheel-dir /wheels -r requirements.txt

# --- runtime ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PORT=8000 \
    PROMETHEUS_MULTIPROC_DIR=/app/var/prometheus

# A fixed uid/gid so volumes and Kubernetes securityContext (runAsUser 10001) agree.
# HOME is under var/ because the code tree itself is read-only to this user.
RUN groupadd --system --gid 10001 modelhost \
    && useradd --system --uid 10001 --gid modelhost --no-create-home \
       --home-dir /app/var/home --shell /usr/sbin/nologin modelhost

# Installed from the builder's wheels without copying them into a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \
    pip install --no-index --find-links /wheels -r /tmp/requirements.txt

WORKDIR /app
# The code belongs to root: the app user can read it, not change it.
COPY . .

# Static files are collected at build time and served by whitenoise. Settings refuse to
# start without a production SECRET_KEY, so this one-off value exists only for this
# command; it is not kept in the image's environment.
RUN SECRET_KEY=build-time-only-collectstatic-key-not-used-at-run-time-0123456789 \
    DEBUG=false \
    python manage.py collectstatic --noinput \
    && mkdir -p var/models var/prometheus var/home \
    && chown -R modelhost:modelhost var

USER 10001:10001

EXPOSE 8000

# Liveness of the web process. The slim image has no curl, so Python asks. The Host header
# is `localhost`, which every deployment lists in ALLOWED_HOSTS (docs/operations.md).
# Worker and beat containers replace or disable this check (docker-compose.yml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), headers={'Host': 'localhost'}), timeout=4)"]

# Procfile `web`. Exec form: the server (granian's main process) is PID 1 and receives SIGTERM itself.
CMD ["python", "-m", "platform_site.serve"]
