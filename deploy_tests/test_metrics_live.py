"""Every metric the Grafana dashboard and the alert rules read is on a live /metrics.

The static tests check the names against their sources; this one asks the running
Django application, so a metric that is defined but never registered in the web process
(or renamed by a setting) fails here.
"""

from __future__ import annotations

import json

import pytest
import yaml

from deploy_tests import promql
from deploy_tests.toolchain import REPO


def queried_samples() -> set[str]:
    board = json.loads((REPO / "monitoring" / "grafana" / "dashboards" / "modelhost.json").read_text())
    queries = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    queries += [variable["query"]["query"] for variable in board["templating"]["list"]]
    rules = yaml.safe_load((REPO / "monitoring" / "alerts.yml").read_text())["groups"]
    queries += [rule["expr"] for group in rules for rule in group["rules"]]
    return {name for query in queries for name in promql.metric_names(query)}


@pytest.mark.django_db
def test_metrics_endpoint_exposes_every_metric_the_dashboard_and_alerts_read(client, settings):
    settings.METRICS_TOKEN = "metrics-token"
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token")
    assert response.status_code == 200
    text = response.content.decode()
    missing = []
    for sample in sorted(queried_samples()):
        family = promql.family_of_sample(sample)
        assert family is not None, f"{sample} is not a known metric"
        name = family.exposition_name
        if f"# HELP {name} " not in text or f"# TYPE {name} {family.kind}" not in text:
            missing.append(name)
    assert not missing, f"/metrics lacks {missing}"
