"""Settings for the workers of test_batch_heartbeat.py: the suite's own, with a fast heartbeat.

The broker keeps production's visibility timeout (an hour), so the only way a killed
worker's chunk comes back within the test is the heartbeat rule of requeue_stalled_jobs.
"""

from platform_site.settings import *  # noqa: F401,F403

CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
BATCH_HEARTBEAT_SECONDS = 0.5
