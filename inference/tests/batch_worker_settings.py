"""Settings for the Celery workers that test_batch_workers.py starts: the suite's own, plus two changes.

Redis hands a dead worker's unacknowledged task to another worker only once it has been
unacknowledged for the visibility timeout (3600 s in platform_site.settings), checked by a
sweep every `unacked_restore_interval * unacked_restore_throttle` seconds (100 s by default).
Here the timeout is 5 s and the sweep runs every second, so the killed worker's chunk comes
back within the test. Chunk tasks in that test take well under a second, so none is
redelivered while it still runs. The webhook receiver of the test listens on 127.0.0.1.
"""

from platform_site.settings import *  # noqa: F401,F403

CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 5, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
BATCH_WEBHOOK_ALLOW_PRIVATE_HOSTS = True
