"""The platform's own Prometheus metrics: one place names them all.

Dashboards and alert rules in monitoring/ are written against these names; a test scrapes
a live /metrics and checks every name a dashboard queries exists. With several web
processes, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) aggregates them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

PREDICTION_REQUESTS = Counter(
    "modelhost_prediction_requests_total",
    "Prediction requests answered, by organization, model, version, protocol and variant.",
    ["org", "model", "version", "protocol", "variant"],
)
PREDICTION_ROWS = Counter(
    "modelhost_prediction_rows_total",
    "Rows scored by online prediction requests.",
    ["org", "model", "version"],
)
PREDICTION_ERRORS = Counter(
    "modelhost_prediction_errors_total",
    "Prediction requests that failed, by error code.",
    ["org", "model", "protocol", "code"],
)
PREDICTION_CACHE_HITS = Counter(
    "modelhost_prediction_cache_hits_total",
    "Prediction requests answered from the prediction cache.",
    ["org", "model", "version"],
)
PREDICTION_LATENCY = Histogram(
    "modelhost_prediction_latency_seconds",
    "Server-side latency of a prediction request, from authentication to the response.",
    ["org", "model", "version", "protocol"],
    buckets=LATENCY_BUCKETS,
)
RUNNER_PREDICTIONS = Counter(
    "modelhost_runner_predictions_total",
    "Predictions runners answered, by what computed them: onnx (a tree ensemble's verified compiled form) or sklearn.",
    ["runtime"],
)
WEB_ON_LOOP = Counter(
    "modelhost_web_on_loop_total",
    "Prediction requests a web worker's event loop took up itself (platform_site.on_loop), by outcome: "
    "answered there, or left for a request thread (a query, a runner or a changed route was needed).",
    ["outcome"],
)
MODEL_LOAD_SECONDS = Histogram(
    "modelhost_model_load_seconds",
    "Time to send a version's serving artifact to its runner and load it there.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


class WebGauge:
    """A gauge only the web processes report: in a Celery worker or beat, `set` does nothing.

    In multiprocess mode a plain Gauge writes its value (0) into the shared folder the moment
    it is created, that is when this module is imported. On one host the worker and beat share
    that folder with the web, so their never-updated 0 made min(modelhost_cache_up) read 0
    while every web process saw Redis answer. This one makes its Gauge on its first `set` in a
    process that may report it (or at the first scrape, see `report_web_gauges_once`).
    """

    def __init__(self, make: Callable[[], Gauge]) -> None:
        self._make = make
        self._gauge: Gauge | None = None
        self._lock = threading.Lock()

    def set(self, value: float) -> None:
        if _web_gauges_reported:
            self._created().set(value)

    def is_created(self) -> bool:
        return self._gauge is not None

    def _created(self) -> Gauge:
        if self._gauge is None:
            with self._lock:
                if self._gauge is None:
                    self._gauge = self._make()
        return self._gauge


_web_gauges_reported = True


def stop_reporting_web_gauges() -> None:
    """Called when a Celery worker or beat starts (platform_site.celery): their values are not the web's."""
    global _web_gauges_reported
    _web_gauges_reported = False


CACHE_UP = WebGauge(
    lambda: Gauge(
        "modelhost_cache_up",
        "1 when the Redis cache answered the last call of a web process, 0 when it failed (the minimum over web processes).",
        multiprocess_mode="livemin",
    )
)
BATCH_JOBS_FINISHED = Counter(
    "modelhost_batch_jobs_finished_total",
    "Batch jobs that reached a final state, by state.",
    ["status"],
)
BATCH_ROWS = Counter(
    "modelhost_batch_rows_total",
    "Rows scored by batch jobs.",
    [],
)
RECORDS_SPILLED = Counter(
    "modelhost_records_spilled_total",
    "Prediction records kept in a web process's buffer because the record stream was at its bound.",
    [],
)
RECORDS_DROPPED = Counter(
    "modelhost_records_dropped_total",
    "Prediction records lost because the stream was at its bound and the process's buffer was full.",
    [],
)


# --- gauges read at scrape time -----------------------------------------------------------
# These describe shared state (the broker, the workers, the latest drift reports), so the
# web process that is scraped reads them when asked instead of each process exporting them.

QUEUES = ("default", "batch", "analytics", "ingest")
# Apps add (name, callable) pairs that yield GaugeMetricFamily samples; analytics registers
# the drift gauge this way, since nothing may import from analytics.
SCRAPE_HOOKS: dict[str, object] = {}


class PlatformCollector:
    """Broker queue depth, live Celery workers and app-provided gauges, at scrape time."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        queue_length = GaugeMetricFamily("modelhost_queue_length", "Messages waiting in each Celery queue.", labels=["queue"])
        for queue, depth in queue_depths().items():
            queue_length.add_metric([queue], depth)
        yield queue_length
        workers = GaugeMetricFamily("modelhost_workers_online", "Celery workers that sent a heartbeat in the last 30 seconds.")
        workers.add_metric([], float(len(workers_online())))
        yield workers
        drift = GaugeMetricFamily(
            "modelhost_drift_detected",
            "1 when the latest drift report of a production version says drift.",
            labels=["org", "model", "version"],
        )
        hook = SCRAPE_HOOKS.get("drift")
        if hook is not None:
            for labels, value in hook():
                drift.add_metric(labels, value)
        yield drift
        yield from runner_families(SCRAPE_HOOKS.get("runners"))
        backlog = GaugeMetricFamily(
            "modelhost_record_backlog",
            "Prediction records waiting in the Redis stream for the ingestion worker (NaN when unknown).",
        )
        hook = SCRAPE_HOOKS.get("record_backlog")
        backlog.add_metric([], hook() if hook is not None else float("nan"))
        yield backlog

    def describe(self):
        return []


# The runner hosts' figures, asked of each host when the web is scraped (the hosts import no
# Prometheus client and serve no HTTP: a runner host is reached only by the web and workers).
RUNNER_FAMILIES = {
    "modelhost_runner_host_up": ("gauge", "1 when the runner host answered its status within a second, else 0."),
    "modelhost_runners": ("gauge", "Runner processes the host holds (at most RUNNER_PROCESSES_PER_ORG per organization)."),
    "modelhost_models_loaded": ("gauge", "Model versions loaded in the host's runners, summed over runners."),
    "modelhost_runner_memory_bytes": (
        "gauge",
        "Memory of the host's runners (their proportional set sizes), the figure its RUNNER_MEMORY_BUDGET_MB bounds.",
    ),
    "modelhost_runner_organizations": ("gauge", "Organizations that have at least one runner on the host."),
    "modelhost_runner_organizations_backing_off": (
        "gauge",
        "Organizations whose runner crashed and waits out its restart backoff.",
    ),
    "modelhost_runners_started": ("counter", "Runners the host has started since it started."),
    "modelhost_runners_crashed": (
        "counter",
        "Runners that ended by a signal or an unexpected exit (a model crashing its runner) since the host started.",
    ),
}


def runner_families(hook):
    """The RUNNER_FAMILIES metric families filled from ``hook()`` samples, one label ``host``."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    families = {}
    for name, (kind, documentation) in RUNNER_FAMILIES.items():
        make = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        families[name] = make(name, documentation, labels=["host"])
    for name, labels, value in hook() if hook is not None else ():
        families[name].add_metric(labels, value)
    return families.values()


def queue_depths() -> dict[str, float]:
    """Messages waiting per queue, asked of the broker with a short timeout; NaN when unknown."""
    from django.conf import settings
    from kombu import Connection

    depths = {queue: float("nan") for queue in QUEUES}
    try:
        with Connection(
            settings.CELERY_BROKER_URL, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS, connect_timeout=1
        ) as conn:
            channel = conn.default_channel
            for queue in QUEUES:
                try:
                    depths[queue] = float(channel.queue_declare(queue=queue, passive=True).message_count)
                except Exception:  # a queue nobody declared yet holds nothing
                    depths[queue] = 0.0
    except Exception:  # broker down: the gauge says "unknown" and the worker-down alert speaks
        pass
    return depths


HEARTBEAT_SECONDS = 10
HEARTBEAT_TTL = 30


def record_worker_heartbeat(hostname: str) -> None:
    """Called by each worker every HEARTBEAT_SECONDS (platform_site.celery)."""
    from django.core.cache import cache

    known = set(cache.get("mh:workers", []))
    known.add(hostname)
    cache.set("mh:workers", sorted(known), timeout=None)
    cache.set(f"mh:worker:{hostname}", 1, timeout=HEARTBEAT_TTL)


def workers_online() -> list[str]:
    from django.core.cache import cache

    try:
        known = cache.get("mh:workers", [])
        alive = cache.get_many([f"mh:worker:{name}" for name in known])
    except Exception:  # cache down: no worker can be confirmed
        return []
    return [name for name in known if f"mh:worker:{name}" in alive]


def forget_dead_processes() -> list[int]:
    """Drop the live gauges of web processes that are gone (prometheus_client's mark_process_dead).

    granian starts a new worker when one dies but has no hook to clean up after the dead one;
    each worker calls this when it starts and /metrics at every scrape, so a dead worker's
    models-loaded and cache-up values stop counting. Returns the pids it dropped.
    """
    import os
    import re

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder or not os.path.isdir(folder):
        return []
    from prometheus_client import multiprocess

    dropped = []
    pids = {int(m.group(1)) for name in os.listdir(folder) if (m := re.fullmatch(r"gauge_live\w+_(\d+)\.db", name))}
    for pid in sorted(pids):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
            dropped.append(pid)
        except PermissionError:  # alive, another user's
            pass
    return dropped


def metrics_refusal(request):
    """The answer that refuses `request` /metrics, or None when it may read them.

    The metrics name every organization and model, so they are for Prometheus only: a
    request must carry `Authorization: Bearer <METRICS_TOKEN>` (compared in constant time).
    Without a token set, /metrics is open under DEBUG (`make run`) and closed otherwise, a
    403 that says why: a production deployment that forgot the token must not serve them.
    """
    import hmac

    from django.conf import settings
    from django.http import HttpResponse

    token = settings.METRICS_TOKEN
    if not token:
        if settings.DEBUG:
            return None
        return HttpResponse(
            "/metrics is closed: set METRICS_TOKEN and give Prometheus the same token as a bearer token.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    scheme, _, presented = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
        return None
    response = HttpResponse(
        "/metrics needs the bearer token METRICS_TOKEN.\n", status=401, content_type="text/plain; charset=utf-8"
    )
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def report_web_gauges_once() -> None:
    """Give the scraped web process its own values of the web gauges if it has none yet.

    A web process that has not called Redis yet asks it once now, so a fresh process reports
    what it sees rather than nothing.
    """
    if not CACHE_UP.is_created():
        from platform_site.redis_client import REDIS_ERRORS, get_redis, report_failure, report_success

        client = get_redis()
        if client is not None:
            try:
                client.ping()
            except REDIS_ERRORS as exc:
                report_failure(exc)
            else:
                report_success()
        if not CACHE_UP.is_created():  # no Redis configured (or its breaker open): not up
            CACHE_UP.set(0)


def metrics_view(request):
    """/metrics: the multiprocess aggregate of every web process, plus the scrape-time gauges."""
    import os

    from django.http import HttpResponse
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

    refusal = metrics_refusal(request)
    if refusal is not None:
        return refusal
    report_web_gauges_once()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        forget_dead_processes()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_platform_collector)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


_platform_collector = PlatformCollector()


def register_platform_collector() -> None:
    from prometheus_client import REGISTRY

    try:
        REGISTRY.register(_platform_collector)
    except ValueError:  # already registered (autoreload)
        pass
