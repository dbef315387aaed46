"""Settings come from the environment; production values pass Django's deploy checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "SECURE_SSL_REDIRECT"}
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def test_production_settings_pass_check_deploy():
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            "DEBUG": "false",
            "SECRET_KEY": "x9-production-like-secret-" + "k" * 40,
            "ALLOWED_HOSTS": "modelhost.example.com",
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test",
            "REDIS_URL": "redis://127.0.0.1:6379/15",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_missing_secret_key_in_production_fails_at_start():
    result = run_manage("check", env={"DEBUG": "false"})
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr and "ImproperlyConfigured" in result.stderr


@pytest.mark.parametrize("storage", ["ftp"])
def test_unknown_model_storage_fails_at_start(storage):
    result = run_manage("check", env={"DEBUG": "true", "MODEL_STORAGE": storage})
    assert result.returncode != 0
    assert "MODEL_STORAGE must be 'local' or 's3'" in result.stderr


def test_embedded_defaults_use_sqlite_in_wal_and_the_embedded_redis_for_everything(tmp_path):
    """With DATABASE_URL/REDIS_URL unset: SQLite (immediate transactions, WAL) and the Redis of var/."""
    script = (
        "from django.conf import settings as s; o = s.DATABASES['default']['OPTIONS'];"
        "print(s.DATABASES['default']['ENGINE'], o['transaction_mode'], 'journal_mode=WAL' in o['init_command'],"
        " s.CACHES['default']['BACKEND'].rsplit('.',1)[1], s.CACHES['default']['LOCATION'], s.REDIS_URL, s.CELERY_BROKER_URL)"
    )
    result = run_manage("shell", "-c", script, env={"DEBUG": "true", "VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-7:] == [
        "django.db.backends.sqlite3",
        "IMMEDIATE",
        "True",
        "RedisCache",
        f"unix://{tmp_path}/redis.sock",
        f"unix://{tmp_path}/redis.sock",
        f"redis+socket://{tmp_path}/redis.sock",
    ]
