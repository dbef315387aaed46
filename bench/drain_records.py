"""Drain Modelhost's prediction-record stream into PostgreSQL, as the ingest worker does.

    .venv/bin/python bench/drain_records.py          # until the stream is empty; prints the count
    .venv/bin/python bench/drain_records.py --loop   # keep draining until killed (during a run)

Runs `inference.records.drain_stream()` (the worker's own service) with the benchmark's
environment (bench/harness.py passes it), so Redis memory stays bounded over a long run and
the number of records stored can be checked against the number of requests wrk completed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_site.settings")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
django.setup()

from inference.records import drain_stream  # noqa: E402


def drain_until_empty() -> int:
    total = 0
    while True:
        done = drain_stream(batch_size=5000, max_batches=50)
        total += done
        if done == 0:
            return total


if __name__ == "__main__":
    if "--loop" in sys.argv:
        while True:
            if drain_stream(batch_size=5000, max_batches=50) == 0:
                time.sleep(0.5)
    print(drain_until_empty())
