"""What a process imports when it starts: `make run` starts eight at once on a small machine."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[2]


def test_django_setup_leaves_scipy_to_the_statistics_that_use_it():
    """migrate, beat and the workers set Django up; scipy.stats alone cost each a second or more."""
    code = "import django, sys; django.setup(); print('scipy.stats' in sys.modules, 'scipy' in sys.modules)"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "platform_site.settings"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout


def test_the_statistics_still_compute_with_scipy_imported_where_used():
    from analytics.statistics import drift, experiments, replay

    assert experiments.wilson_interval(50, 100).low < 0.5 < experiments.wilson_interval(50, 100).high
    assert drift.ks_test(__import__("numpy").arange(50.0), __import__("numpy").arange(50.0) + 100)[1] < 0.001
    assert replay.paired_accuracy([1, 0, 1, 1], [1, 0, 0, 1], [1, 0, 1, 1])["candidate"]["value"] == 1.0


@pytest.mark.django_db
def test_seed_demo_migrates_first_in_the_same_start():
    out = io.StringIO()
    call_command("seed_demo", "--migrate", "--quiet", stdout=out)
    assert out.getvalue().strip().startswith("mh_")
