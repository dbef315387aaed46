"""docs/operations.md documents every setting; docs/scaling.md claims no unmeasured figure."""

from __future__ import annotations

import re

import yaml

from deploy_tests.toolchain import REPO, load_yaml_documents

OPERATIONS = REPO / "docs" / "operations.md"
SCALING = REPO / "docs" / "scaling.md"


def settings_variables() -> set[str]:
    """Every environment variable the settings module and the web server's launcher read."""
    settings = (REPO / "platform_site" / "settings.py").read_text()
    names = set(re.findall(r'\benv(?:\.\w+)?\(\s*"([A-Z][A-Z0-9_]*)"', settings))
    server = (REPO / "platform_site" / "serve.py").read_text()
    names |= set(re.findall(r"""(?:os\.environ\.get|_int|_flag)\(\s*['"]([A-Z][A-Z0-9_]*)['"]""", server))
    example = REPO / ".env.example"
    if example.exists():
        names |= set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example.read_text(), re.MULTILINE))
    return names


def documented_variables() -> set[str]:
    """Variables with a row in the configuration reference: | `NAME` | default | meaning |."""
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", OPERATIONS.read_text(), re.MULTILINE))


def test_settings_are_found():
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "WEB_CONCURRENCY", "PORT"} <= settings_variables()


def test_every_environment_variable_is_documented():
    missing = settings_variables() - documented_variables()
    assert not missing, f"docs/operations.md has no row for {sorted(missing)}"


def test_operations_guide_covers_backup_restore_and_upgrades():
    text = OPERATIONS.read_text()
    for heading in ("## Configuration reference", "## Backup and restore", "## Upgrading", "## Alerts"):
        assert heading in text, heading


def test_scaling_figures_are_measured_or_marked_to_be_measured():
    text = SCALING.read_text()
    assert "to be measured by bench/" in text
    # Throughput and latency figures only come from bench/: any number with such a unit
    # must sit on a line that names its bench/ source.
    for line in text.splitlines():
        if re.search(r"\d\s*(?:req/s|requests/s|rows/s|tasks/s|ms\b|rps\b)", line):
            assert "bench/" in line, f"unsourced figure in docs/scaling.md: {line}"


def processes_named(text: str) -> set[str]:
    """The app processes a sentence names: web, demo, beat and workers (bare `worker` too)."""
    return set(re.findall(r"\b(web|demo|beat|worker(?:-[a-z]+)?)\b", text))


def test_operations_guide_names_the_processes_that_may_reach_the_runners():
    """The "who may connect" row names what compose and the NetworkPolicy actually let through."""
    row = next(line for line in OPERATIONS.read_text().splitlines() if line.startswith("| who may connect to the host |"))
    _, _, _, compose_cell, kubernetes_cell, _ = row.split("|")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    on_runner_network = {name for name, service in compose["services"].items() if "runners" in service.get("networks", [])}
    assert processes_named(compose_cell) == on_runner_network - {"runner"}
    (policy,) = load_yaml_documents(REPO / "kubernetes" / "base" / "runner-networkpolicy.yaml")
    admitted = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
    }
    assert processes_named(kubernetes_cell) == admitted
