# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

# The test suite talks to the machine's real PostgreSQL and Redis.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL    ?= redis://127.0.0.1:6379/15
TEST_ENV = DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	SECRET_KEY=test-secret-key-for-the-suite-only-0123456789abcdefghijklmnopqrstuvwxyz \
	DEBUG=false SECURE_SSL_REDIRECT=false ALLOWED_HOSTS=testserver,127.0.0.1,localhost \
	MODEL_STORAGE_ROOT=$(CURDIR)/var/test-models RECORD_FLUSH_SECONDS=3600 \
	RUNNER_ADDRESSES=unix:$(CURDIR)/var/test-run/runner.sock RUNNER_PROCESSES_PER_ORG=1 RUNNER_IDLE_SECONDS=120 RUNNER_BACKOFF_MAX_SECONDS=4 \
	MODEL_CHECK_SOCKET=$(CURDIR)/var/test-run/sandbox.sock
# RUNNER_*: the suite starts one runner host (conftest.py) that every test, live server and
# worker it starts uses; one runner per organization keeps the hundreds of test tenants cheap.
# MODEL_CHECK_SOCKET: that host also serves the upload checks.
# RECORD_FLUSH_SECONDS: tests flush the in-process record buffer themselves; the background
# flusher, writing from its own database connection, would race a test's open transaction.

.PHONY: run test lint fmt install install-dev services migrate demo check-deploy clean screenshots bench-inference bench-memory bench-upload bench-soak

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PIP) install -r requirements-dev.txt
	touch $@ $(RUNTIME_STAMP)

install: $(RUNTIME_STAMP)
install-dev: $(DEV_STAMP)

## run: set up and start web, worker and beat on http://127.0.0.1:8000 (Ctrl-C stops all)
run: $(RUNTIME_STAMP)
	@scripts/run.sh

## test: the lint, then the whole suite against the real PostgreSQL and Redis
test: lint services
	$(TEST_ENV) $(PY) manage.py collectstatic --noinput -v0
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

## lint: ruff's checks and its formatting, as configured in pyproject.toml (seconds)
lint: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## fmt: format the code and apply ruff's safe fixes; review the diff before committing
fmt: $(DEV_STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

services:
	@scripts/ensure_services.sh

## screenshots: refresh docs/screenshots/ from the browser tests
screenshots: $(DEV_STAMP) services
	@scripts/install_ui_tools.sh
	$(TEST_ENV) $(PY) manage.py collectstatic --noinput -v0
	MODELHOST_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(TEST_ENV) $(PY) -m pytest web_tests/test_browser*.py -q

## bench-inference: Modelhost against MLServer, mlflow serve and a bare WSGI app (~10 min)
bench-inference: $(DEV_STAMP) services
	$(PYTHON) bench/inference_bench.py

## bench-memory: RSS with 100 models, and the cold first request
bench-memory: $(DEV_STAMP) services
	$(PYTHON) bench/memory_bench.py

## bench-soak: 10 minutes of the three protocols with bad inputs and feedback; records sent = stored
bench-soak: $(DEV_STAMP) services
	$(PYTHON) bench/soak.py

## bench-upload: upload-to-ready time for iris and a 500-tree forest
bench-upload: $(DEV_STAMP) services
	$(PY) bench/upload_bench.py

## check-deploy: Django's production checks with production-like values
check-deploy: $(RUNTIME_STAMP)
	DEBUG=false SECRET_KEY=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(64))') \
	ALLOWED_HOSTS=modelhost.example.com DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	$(PY) manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) var staticfiles
