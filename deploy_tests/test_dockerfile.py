"""The Dockerfile: multi-stage, pinned, non-root, healthy, and running the Procfile's web."""

from __future__ import annotations

import re

import pytest

from deploy_tests.toolchain import REPO, procfile_commands, require_module, require_python_tool, run_tool

DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def instructions() -> tuple:
    """The Dockerfile as BuildKit's own parser reads it (the `dockerfile` package)."""
    return require_module("dockerfile").parse_file(str(DOCKERFILE))


def final_stage(instructions) -> list:
    last_from = max(index for index, command in enumerate(instructions) if command.cmd == "FROM")
    return list(instructions[last_from:])


def only(commands, name: str):
    found = [command for command in commands if command.cmd == name]
    assert len(found) == 1, f"expected one {name} in the final stage, found {len(found)}"
    return found[0]


def test_dockerfile_passes_hadolint():
    hadolint = require_python_tool("hadolint")
    result = run_tool([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_a_pinned_python_3_11_slim_bookworm(instructions):
    args = dict(command.value[0].split("=", 1) for command in instructions if command.cmd == "ARG" and "=" in command.value[0])
    images = [command.value[0] for command in instructions if command.cmd == "FROM"]
    resolved = [args[image[2:-1]] if image.startswith("${") else image for image in images]
    for image in resolved:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image


def test_build_is_multi_stage_and_runtime_installs_only_built_wheels(instructions):
    stages = [command.value for command in instructions if command.cmd == "FROM"]
    assert [stage[-1] for stage in stages] == ["builder", "runtime"]
    starts = [index for index, command in enumerate(instructions) if command.cmd == "FROM"]
    builder_runs = [command.value[0] for command in instructions[starts[0] : starts[1]] if command.cmd == "RUN"]
    assert any("pip wheel --wheel-dir /wheels -r requirements.txt" in run for run in builder_runs)
    install = [command for command in final_stage(instructions) if command.cmd == "RUN" and "pip install" in command.value[0]]
    assert len(install) == 1
    assert "--no-index --find-links /wheels" in install[0].value[0]
    assert any("from=builder" in flag for flag in install[0].flags)


def test_runtime_runs_as_the_non_root_user_it_creates(instructions):
    stage = final_stage(instructions)
    user = only(stage, "USER").value[0]
    assert user == "10001:10001"
    creates_user = " ".join(command.value[0] for command in stage if command.cmd == "RUN")
    assert "useradd --system --uid 10001" in creates_user
    assert "groupadd --system --gid 10001" in creates_user
    user_index = stage.index(only(stage, "USER"))
    assert stage.index(only(stage, "CMD")) > user_index


def test_static_files_are_collected_at_build_without_keeping_a_secret(instructions):
    stage = final_stage(instructions)
    collect = [command for command in stage if command.cmd == "RUN" and "collectstatic" in command.value[0]]
    assert len(collect) == 1
    assert "python manage.py collectstatic --noinput" in collect[0].value[0]
    # Settings need a 50-character SECRET_KEY when DEBUG is off; it must not become ENV.
    assert re.search(r"SECRET_KEY=\S{50,}", collect[0].value[0])
    env_names = [name for command in stage if command.cmd == "ENV" for name in command.value[::2]]
    assert "SECRET_KEY" not in env_names


def test_writable_var_directories_exist_for_the_app_user(instructions):
    stage = final_stage(instructions)
    env = {
        name: value
        for command in stage
        if command.cmd == "ENV"
        for name, value in zip(command.value[::2], command.value[1::2], strict=True)
    }
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/app/var/prometheus"
    assert env["PORT"] == "8000"
    assert only(stage, "WORKDIR").value[0] == "/app"
    prepare = " ".join(command.value[0] for command in stage if command.cmd == "RUN")
    assert "mkdir -p var/models var/prometheus var/home" in prepare
    assert "chown -R modelhost:modelhost var" in prepare


def test_healthcheck_asks_healthz_with_python(instructions):
    healthcheck = only(final_stage(instructions), "HEALTHCHECK")
    assert healthcheck.json
    assert healthcheck.value[:3] == ("CMD", "python", "-c")
    assert "/healthz" in healthcheck.value[3]
    assert "curl" not in healthcheck.value[3]
    # The command is valid Python.
    compile(healthcheck.value[3], "HEALTHCHECK", "exec")


def test_default_command_is_the_procfile_web_process(instructions):
    cmd = only(final_stage(instructions), "CMD")
    assert cmd.json, "CMD must use the exec form so gunicorn is PID 1 and gets SIGTERM"
    assert list(cmd.value) == procfile_commands()["web"]
    assert not [command for command in instructions if command.cmd == "ENTRYPOINT"]
    assert only(final_stage(instructions), "EXPOSE").value == ("8000",)


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignored = {
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    }
    for pattern in (".git", ".env", ".env.*", ".venv", "var", "staticfiles", "**/__pycache__"):
        assert pattern in ignored, pattern
    for needed in ("platform_site", "requirements.txt", "manage.py", "Procfile", "static", "templates"):
        assert needed not in ignored, needed
