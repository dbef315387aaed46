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

The one wait such a request does make, its Redis round trip (the limit script, which also reads
the prediction cache), does not hold the loop: each request the loop answers runs in a greenlet
of its own (OnLoopRequest), and platform_site.redis_client, finding itself in one, sends the
commands and suspends the request (`wait_on_loop`) until the loop has read the replies, while
the loop reads other requests' bodies and answers them. The code of the request stays the plain
synchronous code a request thread runs; only the wait is handed to the loop, the way
SQLAlchemy's asyncio layer runs its synchronous core (greenlet's documented switch/throw). A
blocking round trip cost the loop more than the wait itself: with the loop thread asleep in
recv(), granian's threads took the GIL for the next requests and handed it back. Side by side,
the suspended wait gave 5-17 % more iris requests a second at 2-7 % less CPU each
(bench/RESULTS.md, 2026-12-07 22:10).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import greenlet


class LeaveTheLoop(BaseException):  # noqa: N818  (a signal, like GeneratorExit, not an error)
    """The request needs a request thread. A BaseException: the views answer any Exception
    with a problem document, and this one must reach platform_site.rsgi instead."""


class OnLoopRequest(greenlet.greenlet):
    """A request the event loop answers itself. `loop`: the loop it may suspend on to wait for
    Redis (`wait_on_loop`); None where it runs to the end at once (`answer_now`)."""

    def __init__(self, run: Callable, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(run)
        self.loop = loop


def on_event_loop() -> bool:
    """True while the running code is a request the event loop answers itself."""
    return isinstance(greenlet.getcurrent(), OnLoopRequest)


def leave_if_on_loop() -> None:
    """Raise LeaveTheLoop when the event loop is answering this request: the caller is about to wait."""
    if on_event_loop():
        raise LeaveTheLoop


def suspendable_loop() -> asyncio.AbstractEventLoop | None:
    """The loop the running request may suspend on while it waits (`wait_on_loop`), or None: a
    request thread, or a request the loop runs to the end at once."""
    current = greenlet.getcurrent()
    return current.loop if isinstance(current, OnLoopRequest) else None


def wait_on_loop(future: asyncio.Future) -> Any:
    """Suspend the running request until `future` is done, and return its result (or raise its
    exception). Only where `suspendable_loop()` gave the loop the future belongs to."""
    return greenlet.getcurrent().parent.switch(future)


async def answer_on_loop(function: Callable, *args) -> Any:
    """`function(*args)` as a request the loop answers: its waits on `wait_on_loop` are awaited
    here, so the loop goes on with other work meanwhile. Raises what it raises (LeaveTheLoop)."""
    request = OnLoopRequest(function, asyncio.get_running_loop())
    step = request.switch(*args)
    while not request.dead:
        try:
            value = await step
        except BaseException as exc:  # noqa: BLE001  (the request's own code handles or raises it)
            step = request.throw(exc)
        else:
            step = request.switch(value)
    return step


def answer_now(function: Callable, *args) -> Any:
    """`function(*args)` as a request the loop answers, run to the end at once: its Redis round
    trip blocks (tests, bench/profile_hotpath.py)."""
    return OnLoopRequest(function, None).switch(*args)
