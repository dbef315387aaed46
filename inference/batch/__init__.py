"""Batch scoring: a file of rows in, scored by Celery workers in chunks, the same rows out in order.

submit (web) -> split into chunk files (worker) -> score each chunk into a part (workers, in
parallel) -> assemble the parts in order (worker) -> completion webhook. Every step is
idempotent, so a task that runs twice, or is redelivered after its worker died, changes
nothing the first run did not already do.
"""
