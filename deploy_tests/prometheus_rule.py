"""Renders kubernetes/monitoring/prometheusrule.yaml from monitoring/alerts.yml.

The alert rules have one source, alerts.yml (read by promtool, its unit tests and the
compose Prometheus); the Prometheus Operator needs them wrapped in a PrometheusRule.
`python -m deploy_tests.prometheus_rule > kubernetes/monitoring/prometheusrule.yaml`
regenerates the file; test_monitoring.py checks that it is up to date.
"""

from __future__ import annotations

from typing import Any

import yaml

from deploy_tests.toolchain import REPO

ALERTS = REPO / "monitoring" / "alerts.yml"
PROMETHEUS_RULE = REPO / "kubernetes" / "monitoring" / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from monitoring/alerts.yml, the one source of the alert rules: do not edit.\n"
    "# deploy_tests/test_monitoring.py fails when the two differ. To regenerate, run\n"
    "#   python -m deploy_tests.prometheus_rule > kubernetes/monitoring/prometheusrule.yaml\n"
)


class _BlockStringDumper(yaml.SafeDumper):
    """Keeps multi-line PromQL readable as YAML block scalars."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockStringDumper.add_representer(str, _represent_str)


def prometheus_rule_document() -> dict[str, Any]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "modelhost", "labels": {"app.kubernetes.io/name": "modelhost"}},
        "spec": {"groups": groups},
    }


def render_prometheus_rule() -> str:
    return HEADER + yaml.dump(prometheus_rule_document(), Dumper=_BlockStringDumper, sort_keys=False, width=120)


if __name__ == "__main__":
    print(render_prometheus_rule(), end="")
