"""Celery beat's output under `make run`: routine scheduling is DEBUG, not INFO."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def beat_output(*, loglevel: str, tmp_path, until: str, then_seconds: float = 0.0) -> str:
    """Run a real beat that sends drain-prediction-records every 0.3 s; what it printed.

    Stops `then_seconds` after `until` appears in its output (60 s at most)."""
    env = {**os.environ, "RECORD_DRAIN_SECONDS": "0.3"}
    command = [
        sys.executable,
        "-m",
        "celery",
        "--app",
        "platform_site",
        "beat",
        "--loglevel",
        loglevel,
        "--schedule",
        str(tmp_path / "schedule"),
    ]
    log_path = tmp_path / "beat.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 60
            while until not in log_path.read_text() and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.2)
            time.sleep(then_seconds)
        finally:
            process.terminate()
            process.wait(timeout=20)
    return log_path.read_text()


def test_beat_at_info_does_not_log_each_task_it_sends(tmp_path):
    output = beat_output(loglevel="INFO", tmp_path=tmp_path, until="beat: Starting...", then_seconds=3.0)  # ten sends
    assert "beat: Starting..." in output
    assert "Sending due task" not in output


def test_beat_at_debug_still_logs_each_task_it_sends(tmp_path):
    output = beat_output(loglevel="DEBUG", tmp_path=tmp_path, until="Sending due task")
    assert "DEBUG/MainProcess] Scheduler: Sending due task drain-prediction-records" in output
