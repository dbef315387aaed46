"""Liveness and readiness: /healthz says the process is up; /readyz checks each backing service."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.core.files.storage import storages
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _timed(check: Callable[[], str | None]) -> dict:
    started = time.perf_counter()
    try:
        note = check()
    except Exception as exc:  # any failure of a backing service is a "down", reported, not raised
        return {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}"[:300],
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
    result = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    if note:
        result["backend"] = note
    return result


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


def _check_cache() -> str:
    cache.set("readyz:probe", "1", timeout=10)
    if cache.get("readyz:probe") != "1":
        raise RuntimeError("the cache did not return what was written")
    return "redis" if settings.REDIS_URL else "file"


def _check_broker() -> str:
    from kombu import Connection

    with Connection(
        settings.CELERY_BROKER_URL, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS, connect_timeout=1
    ) as conn:
        conn.ensure_connection(max_retries=1, timeout=1)
    return settings.CELERY_BROKER_URL.split(":", 1)[0]


def _check_storage() -> str:
    storage = storages["models"]
    storage.exists("readyz-probe")
    return settings.MODEL_STORAGE


def _check_runners() -> str:
    """Every runner host answers its status; the note says how many runners each holds."""
    from inference.runners.client import ask_host

    held = []
    for address in settings.RUNNER_ADDRESSES:
        status = ask_host(address, {"op": "status"})
        held.append(f"{address}: {len(status['runners'])} runners")
    return "; ".join(held)


def optional_features() -> dict[str, dict]:
    """Each optional feature: whether it is on, and the setting an operator sets to turn it on."""
    return {
        "mlflow_import": {"enabled": bool(settings.MLFLOW_TRACKING_URI), "setting": "MLFLOW_TRACKING_URI"},
    }


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers (degraded if the cache, broker or a runner host do not); 503 without it.

    Predictions keep being served without Redis (uncached), so a cache outage degrades
    readiness rather than failing it; without the database nothing can be served. The optional
    features that are off are listed, with what turns them on; they do not affect the status.
    """
    checks = {
        "database": _timed(_check_database),
        "cache": _timed(_check_cache),
        "broker": _timed(_check_broker),
        "storage": _timed(_check_storage),
        # Without a runner host only models the web evaluates itself are served: degraded.
        "runners": _timed(_check_runners),
    }
    if not checks["database"]["ok"]:
        state, code = "unavailable", 503
    elif all(check["ok"] for check in checks.values()):
        state, code = "ok", 200
    else:
        state, code = "degraded", 200
    features = optional_features()
    features_off = sorted(name for name, feature in features.items() if not feature["enabled"])
    return JsonResponse({"status": state, "checks": checks, "features": features, "features_off": features_off}, status=code)
