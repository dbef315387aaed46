"""Metric names: which ones the platform exposes, and which ones a PromQL query reads.

The exposed names come from their sources, read as text rather than imported (no Django
settings needed): platform_site/metrics.py, django-prometheus' own modules, and the three
collectors the web registers for broker and drift state. Each family is expanded into the
sample names Prometheus sees (a counter `x` is scraped as `x_total`, a histogram as
`x_bucket`, `x_sum`, `x_count`), which is what queries use.

Queries are checked for syntax by promtool (see test_monitoring.py); this module only
needs to find the metric names in a query that already parses, which a small lexer does.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from deploy_tests.toolchain import REPO

PLATFORM_METRICS = REPO / "platform_site" / "metrics.py"
# Registered by the web's collectors for broker and drift state (platform_site).
COLLECTOR_FAMILIES = {
    "modelhost_queue_length": "gauge",
    "modelhost_workers_online": "gauge",
    "modelhost_drift_detected": "gauge",
    "modelhost_record_backlog": "gauge",
}
_METRIC_CLASSES = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary"}


@dataclass(frozen=True)
class MetricFamily:
    name: str  # the name given to the prometheus_client class, `_total` stripped for counters
    kind: str  # counter, gauge, histogram or summary
    source: str

    @property
    def exposition_name(self) -> str:
        """The name of the `# HELP` and `# TYPE` lines in the text format."""
        return f"{self.name}_total" if self.kind == "counter" else self.name

    @property
    def sample_names(self) -> set[str]:
        if self.kind == "counter":
            return {f"{self.name}_total", f"{self.name}_created"}
        if self.kind == "histogram":
            return {f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count", f"{self.name}_created"}
        if self.kind == "summary":
            return {self.name, f"{self.name}_sum", f"{self.name}_count", f"{self.name}_created"}
        return {self.name}


def _family(name: str, kind: str, source: str) -> MetricFamily:
    if kind == "counter" and name.endswith("_total"):
        name = name[: -len("_total")]
    return MetricFamily(name=name, kind=kind, source=source)


def platform_families() -> list[MetricFamily]:
    tree = ast.parse(PLATFORM_METRICS.read_text())
    families = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _METRIC_CLASSES
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            families.append(_family(node.args[0].value, _METRIC_CLASSES[node.func.id], "platform_site/metrics.py"))
    return families


def django_prometheus_families() -> list[MetricFamily]:
    """Every metric django-prometheus defines: `Counter("name", ...)` or `register_metric(Counter, "name", ...)`."""
    spec = importlib.util.find_spec("django_prometheus")
    assert spec is not None and spec.origin, "django-prometheus is not installed (requirements.txt pins it)"
    package = Path(spec.origin).parent
    pattern = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\s*[(,]\s*\"(django_\w+)\"")
    families = []
    for path in sorted(package.rglob("*.py")):
        if "tests" in path.relative_to(package).parts:
            continue
        for kind, name in pattern.findall(path.read_text()):
            families.append(_family(name, _METRIC_CLASSES[kind], f"django_prometheus/{path.relative_to(package)}"))
    return families


def collector_families() -> list[MetricFamily]:
    return [_family(name, kind, "web collectors") for name, kind in COLLECTOR_FAMILIES.items()] + runner_families()


def runner_families() -> list[MetricFamily]:
    """The runner hosts' families, read from the literal `RUNNER_FAMILIES = {name: (kind, help)}`."""
    tree = ast.parse(PLATFORM_METRICS.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "RUNNER_FAMILIES":
            table = ast.literal_eval(node.value)
            return [_family(name, kind, "runner hosts, asked by the web") for name, (kind, _help) in table.items()]
    raise AssertionError("platform_site/metrics.py defines no RUNNER_FAMILIES")


def known_families() -> list[MetricFamily]:
    return platform_families() + django_prometheus_families() + collector_families()


def family_of_sample(sample: str) -> MetricFamily | None:
    for family in known_families():
        if sample in family.sample_names:
            return family
    return None


# --- reading names out of a query ---------------------------------------------------------

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)


def substitute_grafana_variables(expr: str) -> str:
    """A Grafana query as plain PromQL: interval variables become durations, others `.*`."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana `label_values(query, label)`) reads."""
    label_values = _LABEL_VALUES.match(expr)
    if label_values:
        expr = label_values.group(1)
    expr = substitute_grafana_variables(expr)
    expr = _STRING.sub('""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    expr = _GROUPING.sub(" ", expr)
    return {name for name in _IDENTIFIER.findall(expr) if name.lower() not in _KEYWORDS}
