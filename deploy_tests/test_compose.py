"""docker-compose.yml: valid Compose, the Procfile's processes, healthy ordering, shared storage."""

from __future__ import annotations

import copy
import json
from importlib import resources

import pytest
import yaml

from deploy_tests.toolchain import REPO, procfile_commands, require_module

COMPOSE = REPO / "docker-compose.yml"
WORKERS = ("worker-ingest", "worker-analytics", "worker-batch")
APP_SERVICES = ("release", "demo", "web", *WORKERS, "beat")
RUNNER_PORT = 7070
# The processes that predict, so reach the runner: demo promotes (and so warms) its model,
# worker-analytics runs drift reports, worker-batch runs batch jobs. The other app services
# (release, worker-ingest, beat) never predict.
RUNNER_CLIENTS = ("web", "demo", "worker-analytics", "worker-batch")
# What a runner host needs to confine the runners it forks (inference/runners/runner.py).
RUNNER_CAPABILITIES = {"SETUID", "SETGID", "SYS_ADMIN"}


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


def test_runner_service_runs_the_procfile_runner_on_its_port(compose):
    runner = compose["services"]["runner"]
    assert runner["command"] == [*procfile_commands()["runner"], "--listen", f"0.0.0.0:{RUNNER_PORT}"]
    assert runner["image"] == "modelhost:local"
    assert runner["build"] == {"context": ".", "dockerfile": "Dockerfile"}


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
    for name in ("postgres", "redis", "web", *WORKERS, "runner", "mlflow", "prometheus", "alertmanager", "grafana"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    for name in WORKERS:
        # The ping names the worker's own node (its --hostname), or it never answers.
        node = services[name]["command"][services[name]["command"].index("--hostname") + 1].replace("%h", "$$HOSTNAME")
        assert f"inspect ping --destination {node} " in services[name]["healthcheck"]["test"][1], name
    assert "'op': 'status'" in services["runner"]["healthcheck"]["test"][-1]
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
    for name in ("postgres", "redis", "runner", *APP_SERVICES):
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


def test_prometheus_scrapes_with_the_token_the_web_expects(compose):
    """/metrics answers only METRICS_TOKEN; the local default and Prometheus' token file agree."""
    import re

    default = re.fullmatch(r"\$\{METRICS_TOKEN:-(.+)\}", compose["x-app"]["environment"]["METRICS_TOKEN"]).group(1)
    assert (REPO / "monitoring" / "metrics-token").read_text().strip() == default
    assert "./monitoring/metrics-token:/etc/prometheus/metrics-token:ro" in compose["services"]["prometheus"]["volumes"]


def runner_environment_problems(compose: dict) -> list[str]:
    """Ways the runner service could get a secret or a platform setting; empty when none."""
    runner = compose["services"]["runner"]
    problems = [f"the runner reads {key}" for key in ("env_file", "secrets", "configs", "volumes") if key in runner]
    environment = runner.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    platform_values = {value for value in compose["x-app"]["environment"].values() if value}
    for name, value in environment.items():
        # Only the host's own settings, and none carrying a value the platform's processes get.
        if not name.startswith("RUNNER_"):
            problems.append(f"the runner's environment holds {name}")
        elif value in platform_values:
            problems.append(f"{name} carries a value of the platform's settings")
    return problems


def test_runner_service_environment_holds_no_secret(compose):
    assert runner_environment_problems(compose) == []
    secrets = {"SECRET_KEY", "METRICS_TOKEN", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    assert secrets <= set(compose["x-app"]["environment"]), "the platform's secrets moved: update this test"


@pytest.mark.parametrize(
    "mistake",
    [
        lambda compose: compose["services"]["runner"]["environment"].update(SECRET_KEY="x" * 50),
        lambda compose: compose["services"]["runner"]["environment"].update(
            RUNNER_TOKEN=compose["x-app"]["environment"]["SECRET_KEY"]
        ),
        lambda compose: compose["services"]["runner"].update(env_file=[".env"]),
        lambda compose: compose["services"]["runner"].update(volumes=["model-storage:/app/var/models"]),
    ],
    ids=["secret-variable", "secret-value", "env-file", "model-storage"],
)
def test_runner_check_catches_a_secret_in_its_environment(compose, mistake):
    broken = copy.deepcopy(compose)
    mistake(broken)
    assert len(runner_environment_problems(broken)) == 1


def test_the_merged_app_settings_would_be_caught(compose):
    """A runner written as `<<: *app` would inherit every secret: the check sees it."""
    broken = copy.deepcopy(compose)
    broken["services"]["runner"]["environment"] = {
        **compose["x-app"]["environment"],
        **compose["services"]["runner"]["environment"],
    }
    assert "the runner's environment holds SECRET_KEY" in runner_environment_problems(broken)


def test_runner_is_on_an_internal_network_that_only_its_clients_join(compose):
    services = compose["services"]
    assert services["runner"]["networks"] == ["runners"]
    assert compose["networks"]["runners"] == {"internal": True}
    on_runner_network = {name for name, service in services.items() if "runners" in service.get("networks", [])}
    assert on_runner_network == {"runner", *RUNNER_CLIENTS}
    for name in RUNNER_CLIENTS:
        # They still reach PostgreSQL and Redis.
        assert services[name]["networks"] == ["default", "runners"], name
    assert "ports" not in services["runner"]


def test_processes_that_predict_send_predictions_to_the_runner_service(compose):
    for name in RUNNER_CLIENTS:
        assert compose["services"][name]["environment"]["RUNNER_ADDRESSES"] == f"runner:{RUNNER_PORT}", name


@pytest.mark.parametrize("name", sorted(set(APP_SERVICES) - set(RUNNER_CLIENTS)))
def test_processes_that_never_predict_are_not_told_where_the_runner_is(compose, name):
    assert "RUNNER_ADDRESSES" not in compose["services"][name]["environment"]


def test_processes_that_predict_keep_every_platform_setting(compose):
    """Their own environment block replaces *app's; it must still hold all of it."""
    platform = compose["x-app"]["environment"]
    for name in RUNNER_CLIENTS:
        environment = compose["services"][name]["environment"]
        assert {key: environment.get(key) for key in platform} == platform, name


def test_runner_runs_as_root_with_only_the_capabilities_confinement_needs(compose):
    runner = compose["services"]["runner"]
    assert runner["user"] == "0:0"
    assert runner["cap_drop"] == ["ALL"]
    assert set(runner["cap_add"]) == RUNNER_CAPABILITIES
    assert runner["security_opt"] == ["no-new-privileges:true"]
    assert runner["read_only"] is True
    assert "privileged" not in runner
    # The Unix socket the health check asks lives on a writable tmpfs.
    assert "/app/var/run" in runner["tmpfs"]
    assert "/app/var/run/runner.sock" in runner["healthcheck"]["test"][-1]


def test_runner_memory_limit_holds_the_budget_and_one_growing_runner(compose):
    runner = compose["services"]["runner"]
    budget = int(runner["environment"]["RUNNER_MEMORY_BUDGET_MB"].split(":-", 1)[-1].rstrip("}"))
    limit_mib = int(runner["mem_limit"].removesuffix("g")) * 1024
    assert limit_mib >= budget + int(runner["environment"]["RUNNER_MEMORY_MB"]) + 512


def test_runner_health_check_is_the_kubernetes_liveness_command(compose):
    """One status check, run against a real host by test_kubernetes.py."""
    from deploy_tests.toolchain import load_yaml_documents

    (statefulset,) = load_yaml_documents(REPO / "kubernetes" / "base" / "runner-statefulset.yaml")
    (main,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert compose["services"]["runner"]["healthcheck"]["test"] == ["CMD", *main["livenessProbe"]["exec"]["command"]]
