"""docker-compose.yml: valid Compose, the Procfile's processes, healthy ordering, shared storage."""
from __future__ import annotations

import json
from importlib import resources

import pytest
import yaml

from deploy_tests.toolchain import REPO, procfile_commands, require_module

COMPOSE = REPO / "docker-compose.yml"
WORKERS = ("worker-ingest", "worker-analytics", "worker-batch")
APP_SERVICES = ("release", "demo", "web", *WORKERS, "beat")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_spec_schema() -> dict:
    """The Compose Specification's JSON schema, as vendored by check-jsonschema."""
    require_module("check_jsonschema")
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text())


def compose_validator(schema: dict):
    jsonschema = require_module("jsonschema")
    return jsonschema.validators.validator_for(schema)(schema)


def test_compose_file_follows_the_compose_specification(compose):
    schema = compose_spec_schema()
    validator = compose_validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda error: list(error.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_rejects_a_misspelt_service_key():
    broken = {"services": {"web": {"image": "x", "depends_onn": ["db"]}}}
    schema = compose_spec_schema()
    assert list(compose_validator(schema).iter_errors(broken))


@pytest.mark.parametrize("process", ["release", "web", *WORKERS, "beat"])
def test_service_runs_the_procfile_command(compose, process):
    assert compose["services"][process]["command"] == procfile_commands()[process]


def test_every_app_service_runs_the_one_locally_built_image(compose):
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["image"] == "modelhost:local", name
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name


def test_processes_start_after_migrations_and_healthy_backing_services(compose):
    services = compose["services"]
    assert services["release"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["release"]["restart"] == "no"
    for name in ("web", *WORKERS, "beat"):
        assert services[name]["depends_on"] == {
            "release": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name


def test_long_running_services_have_health_checks(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "web", *WORKERS, "mlflow", "prometheus", "alertmanager", "grafana"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    for name in WORKERS:
        # The ping names the worker's own node (its --hostname), or it never answers.
        node = services[name]["command"][services[name]["command"].index("--hostname") + 1].replace("%h", "$$HOSTNAME")
        assert f"inspect ping --destination {node} " in services[name]["healthcheck"]["test"][1], name
    # The image's HTTP check would fail on processes that serve no HTTP.
    for name in ("beat", "release", "demo"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_web_and_worker_share_the_model_storage_volume(compose):
    environment = compose["services"]["web"]["environment"]
    assert environment["MODEL_STORAGE"] == "local"
    mount = f"model-storage:{environment['MODEL_STORAGE_ROOT']}"
    for name in ("web", *WORKERS):
        assert mount in compose["services"][name]["volumes"], name
    assert "model-storage" in compose["volumes"]


def test_app_uses_postgres_and_redis_with_queues_apart_from_cache(compose):
    environment = compose["services"]["web"]["environment"]
    assert environment["DATABASE_URL"].startswith("postgres://modelhost:modelhost@postgres:5432/")
    assert environment["REDIS_URL"] == "redis://redis:6379/0"
    assert environment["CELERY_BROKER_URL"] == "redis://redis:6379/1"
    assert len(environment["SECRET_KEY"].split(":-", 1)[-1].rstrip("}")) >= 50
    # The health check and Prometheus reach the web by these names.
    assert {"localhost", "web"} <= set(environment["ALLOWED_HOSTS"].split(":-", 1)[-1].rstrip("}").split(","))


def test_optional_services_sit_behind_their_profiles(compose):
    services = compose["services"]
    assert services["mlflow"]["profiles"] == ["mlflow"]
    for name in ("prometheus", "alertmanager", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    for name in ("postgres", "redis", *APP_SERVICES):
        assert "profiles" not in services[name], name


def test_monitoring_services_mount_files_that_exist(compose):
    for name in ("prometheus", "alertmanager", "grafana"):
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_published_ports_listen_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
