"""The platform's own Prometheus metrics: one place names them all.

Dashboards and alert rules in monitoring/ are written against these names; a test scrapes
a live /metrics and checks every name a dashboard queries exists. With several web
processes, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) aggregates them.
"""
from __future__ import annotations

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
MODEL_LOAD_SECONDS = Histogram(
    "modelhost_model_load_seconds",
    "Time to load a model version into a process's model cache.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
MODELS_LOADED = Gauge(
    "modelhost_models_loaded",
    "Model versions held in the in-process model caches, summed over processes.",
    multiprocess_mode="livesum",
)
CACHE_UP = Gauge(
    "modelhost_cache_up",
    "1 when the Redis cache answered the last call of this process, 0 when it failed.",
    multiprocess_mode="livemin",
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
