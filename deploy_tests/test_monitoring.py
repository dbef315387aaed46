"""monitoring/: Prometheus configuration and rules, Alertmanager routes, the Grafana dashboard.

promtool and amtool (scripts/install_ops_tools.sh) check the files as Prometheus and
Alertmanager would load them; the dashboard's and the rules' queries may only read
metrics the platform exposes (deploy_tests/promql.py lists them).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from deploy_tests import promql
from deploy_tests.prometheus_rule import PROMETHEUS_RULE, render_prometheus_rule
from deploy_tests.toolchain import REPO, require_debian_tool, run_tool

MONITORING = REPO / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "modelhost.json"
PROVISIONING = MONITORING / "grafana" / "provisioning"
# What the operators asked to be woken for (issue: alert rules).
REQUIRED_ALERTS = {
    "ModelhostHighServerErrorRate",
    "ModelhostPredictionErrorRate",
    "ModelhostPredictionLatencyP99High",
    "ModelhostDriftDetected",
    "ModelhostQueueBacklog",
    "ModelhostNoWorkers",
    "ModelhostCacheUnavailable",
}


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    queries = [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]
    queries += [variable["query"]["query"] for variable in dashboard()["templating"]["list"]]
    return queries


def promtool_accepts(expressions: list[str], tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule; fails with its message if not."""
    promtool = require_debian_tool("promtool")
    rules = {
        "groups": [
            {"name": "syntax", "rules": [{"record": f"check:expression_{i}", "expr": e} for i, e in enumerate(expressions)]}
        ]
    }
    path = tmp_path / "expressions.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run_tool([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_configuration_and_its_rule_files_load():
    result = run_tool([require_debian_tool("promtool"), "check", "config", str(MONITORING / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_prometheus_scrapes_the_web_with_the_metrics_bearer_token():
    (job,) = [
        job
        for job in yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]
        if job["job_name"] == "modelhost-web"
    ]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "metrics-token"}
    assert (MONITORING / job["authorization"]["credentials_file"]).read_text().strip()


def test_alert_rules_load():
    result = run_tool([require_debian_tool("promtool"), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests():
    result = run_tool([require_debian_tool("promtool"), "test", "rules", str(MONITORING / "alerts_test.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet():
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alert_rules():
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == rule["alert"]}
        assert outcomes == {True, False}, f"{rule['alert']} needs a test where it fires and one where it does not"


def test_alerts_cover_what_operators_must_know():
    names = {rule["alert"] for rule in alert_rules()}
    assert REQUIRED_ALERTS <= names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys(), rule["alert"]
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor == rule["alert"].lower()


def test_alert_runbooks_exist_in_the_operations_guide():
    guide = (REPO / "docs" / "operations.md").read_text()
    for rule in alert_rules():
        assert re.search(rf"^#+ {rule['alert']}$", guide, re.MULTILINE), f"docs/operations.md has no section {rule['alert']}"


def test_alerts_read_only_metrics_the_platform_exposes():
    exposed = {sample for family in promql.known_families() for sample in family.sample_names}
    for rule in alert_rules():
        assert promql.metric_names(rule["expr"]) <= exposed, rule["alert"]


def test_alerts_match_error_codes_that_exist():
    tree = ast.parse((REPO / "platform_site" / "errors.py").read_text())
    codes = {
        node.value.elts[1].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Tuple)
        and len(node.value.elts) == 3
        and isinstance(node.value.elts[1], ast.Constant)
    }
    codes |= {
        node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "code" and isinstance(node.value, ast.Constant)
    }
    for rule in alert_rules():
        for alternatives in re.findall(r'code=~"([^"]+)"', rule["expr"]):
            assert set(alternatives.split("|")) <= codes, rule["alert"]


def test_alerts_watch_the_job_prometheus_scrapes():
    jobs = {job["job_name"] for job in yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]}
    for rule in alert_rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, rule["alert"]


def test_prometheus_rule_for_the_operator_is_generated_from_alerts():
    assert PROMETHEUS_RULE.read_text() == render_prometheus_rule(), (
        "kubernetes/monitoring/prometheusrule.yaml is stale: "
        "python -m deploy_tests.prometheus_rule > kubernetes/monitoring/prometheusrule.yaml"
    )


def test_alertmanager_configuration_loads():
    result = run_tool([require_debian_tool("amtool"), "check-config", str(MONITORING / "alertmanager.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_panels_are_well_formed():
    board = dashboard()
    assert board["uid"] == "modelhost-overview"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    datasource_uid = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][0]["uid"]
    for panel in board["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource_uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource_uid, panel["title"]


def test_dashboard_queries_parse(tmp_path):
    promtool_accepts([promql.substitute_grafana_variables(_plain_query(query)) for query in dashboard_queries()], tmp_path)


def _plain_query(query: str) -> str:
    match = re.match(r"^label_values\((.*),\s*\w+\)$", query, re.DOTALL)
    return match.group(1) if match else query


def test_dashboard_reads_only_metrics_the_platform_exposes():
    exposed = {sample for family in promql.known_families() for sample in family.sample_names}
    for query in dashboard_queries():
        names = promql.metric_names(query)
        assert names, f"no metric found in {query!r}"
        assert names <= exposed, f"{sorted(names - exposed)} in {query!r} are not exposed by the platform"


def test_dashboard_shows_traffic_errors_latency_caches_workers_and_drift():
    queries = " ".join(dashboard_queries())
    for sample in (
        "modelhost_prediction_requests_total",
        "django_http_responses_total_by_status_total",
        "modelhost_prediction_errors_total",
        "modelhost_prediction_latency_seconds_bucket",
        "modelhost_prediction_cache_hits_total",
        "modelhost_models_loaded",
        "modelhost_queue_length",
        "modelhost_workers_online",
        "modelhost_drift_detected",
    ):
        assert sample in queries, sample
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(modelhost_prediction_latency_seconds_bucket" in queries


def test_grafana_provisioning_points_at_compose_prometheus_and_the_dashboards_mount():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "modelhost.yml").read_text())["providers"][0]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in compose["services"]["grafana"]["volumes"] if volume.startswith("./"))
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_adapter_query_parses(tmp_path):
    values = yaml.safe_load((REPO / "kubernetes" / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    series = rule["seriesQuery"].split("{", 1)[0]
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", 'namespace="modelhost",pod=~"modelhost-web-.*"')
        .replace("<<.GroupBy>>", "pod")
    )
    promtool_accepts([rule["seriesQuery"], query], tmp_path)


@pytest.mark.parametrize("name", ["PROMETHEUS_METRIC_NAMESPACE", "PROMETHEUS_METRIC_NAMESPACE_PREFIX"])
def test_settings_keep_the_metric_names_the_dashboards_use(name):
    # django-prometheus would prefix every django_* name with this namespace.
    assert name not in (REPO / "platform_site" / "settings.py").read_text()
