"""The Celery application shared by the worker and beat processes."""

import logging
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_site.settings")

app = Celery("modelhost")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class RoutineSchedulingAtDebug(logging.Filter):
    """Beat's "Sending due task" lines are DEBUG records, not INFO.

    Beat sends drain-prediction-records every two seconds; at INFO that line buried
    everything else `make run` prints. Beat's other lines (start, errors) keep their level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).startswith("Scheduler: Sending due task"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("celery.beat").addFilter(RoutineSchedulingAtDebug())


@signals.celeryd_init.connect
@signals.beat_init.connect
def keep_out_of_web_gauges(**kwargs) -> None:
    """A worker or beat sharing the web's metrics folder (one host) must not report the web's gauges."""
    from platform_site.metrics import stop_reporting_web_gauges

    stop_reporting_web_gauges()


@signals.worker_ready.connect
def start_heartbeat(sender=None, **kwargs) -> None:
    """Tell the web processes this worker is alive (modelhost_workers_online), every 10 s."""
    import threading
    import time

    from platform_site.metrics import HEARTBEAT_SECONDS, record_worker_heartbeat

    hostname = getattr(sender, "hostname", None) or "worker"

    def beat() -> None:
        while True:
            try:
                record_worker_heartbeat(hostname)
            except Exception:  # the cache may be briefly down; the next beat retries
                pass
            time.sleep(HEARTBEAT_SECONDS)

    threading.Thread(target=beat, name="modelhost-heartbeat", daemon=True).start()
