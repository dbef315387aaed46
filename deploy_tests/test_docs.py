"""docs/operations.md documents every setting; docs/scaling.md claims no unmeasured figure."""
from __future__ import annotations

import re

from deploy_tests.toolchain import REPO

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
