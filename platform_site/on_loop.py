"""Predictions a web worker's event loop answers itself, without handing them to a request thread.

platform_site.rsgi reads each request's body on the worker's event loop, then hands the
request to a request thread, so that a client that stalls mid-body holds no thread. For the
commonest prediction, a model the web computes itself (inference.predictors: a linear model
reduced to plain numbers), that hand-over cost more than the prediction: a queue, a thread
woken, the answer handed back, the loop woken again, and two threads taking turns at the GIL
(bench/RESULTS.md: 0.2 ms of CPU on a 0.5 ms request). So such a request is answered on the
loop itself when every step it takes is in memory or a short Redis round trip:

- the API key is in this process's key cache and its last-use stamp is not due
  (accounts.authentication); a JWT or a session always goes to a request thread;
- the route, and for a pinned version the version, are in this process's route cache, and
  every target the request can land on is computed here (inference.hotpath.computed_here).

A step that would wait on anything else (the database, a runner, a model's reference data)
calls `leave_if_on_loop()` first, which raises LeaveTheLoop when the loop is answering; the
request is then run again from the start on a request thread. Every such step comes before
the request is counted against its limits, except one: a route that changed under the request
(inference.hotpath), which hands the count it made to the second run instead of counting twice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class LeaveTheLoop(BaseException):  # noqa: N818  (a signal, like GeneratorExit, not an error)
    """The request needs a request thread. A BaseException: the views answer any Exception
    with a problem document, and this one must reach platform_site.rsgi instead."""


_state = threading.local()


def on_event_loop() -> bool:
    """True while this thread is the event loop answering a request itself."""
    return getattr(_state, "active", False)


def leave_if_on_loop() -> None:
    """Raise LeaveTheLoop when the event loop is answering this request: the caller is about to wait."""
    if getattr(_state, "active", False):
        raise LeaveTheLoop


@contextmanager
def answering_on_loop() -> Iterator[None]:
    _state.active = True
    try:
        yield
    finally:
        _state.active = False
