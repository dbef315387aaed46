"""The web's WSGI application behind granian's RSGI interface: a request thread never waits for a client.

    granian --interface rsgi platform_site.rsgi:application    (what platform_site.serve runs)

Under granian's WSGI interface a request thread is handed the request as soon as its headers
have arrived, and then reads the body from the socket itself: a client that announces
`Content-Length: 5000` and sends 100 bytes holds that thread until it disconnects, and
WEB_CONCURRENCY x WEB_THREADS such clients (4 by default) stopped every prediction and
/healthz. granian bounds only the wait for the headers (emmett-framework/granian#728 declines
a body timeout), and a deadline inside the WSGI application cannot help: the thread is
already taken while it waits.

So each worker's event loop reads the whole body first, with no gap between two pieces
longer than WEB_BODY_TIMEOUT_SECONDS (nginx's `client_body_timeout`; a client that stalls is
answered 408 and disconnected), and only then hands the complete request to one of the
worker's WEB_THREADS request threads, which run the WSGI application (platform_site.wsgi
unless WEB_WSGI_TARGET names another) exactly as before. Bodies up to SPOOL_BYTES are kept in
memory, larger ones (model uploads) in a temporary file. A response the application gives as
a list (every JSON answer) is sent in one piece; any other iterable (files, CSV downloads) is
streamed, its chunks produced on a request thread.

A prediction the application can answer from memory (an application with an `on_loop`
method: platform_site.dispatch, platform_site.on_loop) is answered on the event loop itself,
with no request thread: for a linear model the hand-over to a thread and back, and two
threads taking turns at the GIL, cost more than the prediction. Such a request waits on
nothing but its Redis round trip, and that suspended (a greenlet, platform_site.on_loop) while
the loop goes on with other requests; one that would wait on more (a query, a runner) leaves
the loop before it has counted anything and goes to a request thread like every other request.

What it costs (bench/slow_clients.py --floor, bench/RESULTS.md): around a bare application,
0.15 ms of CPU a request through a request thread and 0.13 ms answered on the loop, against
0.04 ms under granian's WSGI interface (0.07 ms for the least an RSGI application does). With
iris predictions (bench/slow_clients.py) the gap to granian's WSGI interface is 0.14 ms answered
on the loop (0.59 against 0.46 ms), where through a request thread it was 0.2-0.28 ms.
WEB_INTERFACE=wsgi (platform_site.serve) goes back to granian's WSGI threads where an ingress
in front buffers the bodies.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import os
import queue
import sys
import tempfile
import threading
from collections.abc import Callable

from granian.rsgi import ProtocolClosed, ProtocolError

from platform_site.on_loop import LeaveTheLoop, answer_on_loop

SPOOL_BYTES = 256 * 1024
DEFAULT_WSGI_TARGET = "platform_site.wsgi:application"
TIMEOUT_BODY = b"The request body did not arrive in time.\n"
INCOMPLETE_BODY = b"The request body ended before its Content-Length.\n"
_PLAIN = [("content-type", "text/plain; charset=utf-8")]
_STATIC_ENVIRON = {
    "GATEWAY_INTERFACE": "CGI/1.1",
    "SCRIPT_NAME": "",
    "SERVER_SOFTWARE": "granian",
    "wsgi.errors": sys.stderr,
    "wsgi.input_terminated": True,
    "wsgi.multiprocess": True,
    "wsgi.multithread": True,
    "wsgi.run_once": False,
    "wsgi.version": (1, 0),
}
_NOT_HTTP_HEADERS = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


def _host_port(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


class _IncompleteBody(Exception):
    pass


class _StartResponse:
    __slots__ = ("headers", "status")

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info=None):
        self.status = int(status.split(" ", 1)[0])
        self.headers = headers
        return self._write

    @staticmethod
    def _write(data: bytes) -> None:
        raise NotImplementedError("the write() callable of start_response is not supported; return the body instead")


class BufferedWSGI:
    """An RSGI application that reads each request's body on the event loop, within a deadline,
    then runs the WSGI application `app` on a pool of `threads` threads."""

    def __init__(self, app: Callable, *, threads: int, body_timeout: float) -> None:
        self.app, self.threads, self.body_timeout = app, threads, body_timeout
        # The application's answer given on the event loop itself, when it has one (platform_site.on_loop).
        self.on_loop: Callable | None = getattr(app, "on_loop", None)
        if self.on_loop is not None:
            from platform_site.metrics import WEB_ON_LOOP

            self.on_loop_counts = (WEB_ON_LOOP.labels(outcome="answered"), WEB_ON_LOOP.labels(outcome="left"))
        self.loop: asyncio.AbstractEventLoop | None = None
        # Work for the request threads: (future, function, args); None stops one. A queue and
        # threads of its own rather than loop.run_in_executor: no concurrent.futures.Future
        # chained to the asyncio one per request.
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.workers: list[threading.Thread] = []

    def __rsgi_init__(self, loop) -> None:
        self.loop = loop
        self.workers = [threading.Thread(target=self._work, name=f"request-{n}", daemon=True) for n in range(self.threads)]
        for thread in self.workers:
            thread.start()

    def __rsgi_del__(self, loop) -> None:
        for _ in self.workers:
            self.work.put(None)
        for thread in self.workers:
            thread.join(timeout=20)

    def _work(self) -> None:
        resolve = self.loop.call_soon_threadsafe
        while (item := self.work.get()) is not None:
            future, function, args = item
            try:
                result = function(*args)
            except BaseException as exc:  # noqa: BLE001  (handed to the request's coroutine, which raises it)
                resolve(_settle, future, None, exc)
            else:
                resolve(_settle, future, result, None)

    def _in_thread(self, function: Callable, *args) -> asyncio.Future:
        future = self.loop.create_future()
        self.work.put((future, function, args))
        return future

    async def __rsgi__(self, scope, protocol) -> None:
        if scope.proto != "http":  # websockets are off (platform_site.serve)
            return
        try:
            body = await self._read_body(scope, protocol)
        except TimeoutError:
            protocol.response_bytes(408, [*_PLAIN, ("connection", "close")], TIMEOUT_BODY)
            return
        except (ProtocolError, ProtocolClosed, _IncompleteBody):  # the client went away mid-body
            protocol.response_bytes(400, [*_PLAIN, ("connection", "close")], INCOMPLETE_BODY)
            return
        environ = self._environ(scope, body)
        if self.on_loop is not None and isinstance(body, bytes):
            answer = await self._answer_on_loop(environ)
            if answer is not None:
                protocol.response_bytes(*answer)
                return
        status, headers, result = await self._in_thread(self._call, environ)
        if isinstance(result, bytes):
            protocol.response_bytes(status, headers, result)
            return
        await self._stream(protocol, status, headers, result)

    async def _read_body(self, scope, protocol):
        """The body, in memory or in a temporary file; TimeoutError when the client pauses too long."""
        loop, timeout = self.loop, self.body_timeout
        length = scope.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared <= SPOOL_BYTES:
            # The usual case (every prediction): granian collects it, within one deadline.
            async with asyncio.timeout_at(loop.time() + timeout):
                body = await protocol()
            if len(body) != declared:
                raise _IncompleteBody
            return body
        pieces: list[bytes] = []
        size = 0
        spool = None
        async with asyncio.timeout_at(loop.time() + timeout) as deadline:
            async for chunk in protocol:
                deadline.reschedule(loop.time() + timeout)
                if not chunk:
                    continue
                if spool is not None:
                    spool.write(chunk)
                    continue
                pieces.append(chunk)
                size += len(chunk)
                if size > SPOOL_BYTES:
                    spool = tempfile.TemporaryFile()  # noqa: SIM115  (closed once the application has read it)
                    spool.writelines(pieces)
                    pieces = []
        if spool is None:
            body = b"".join(pieces)
            received = len(body)
        else:
            received = spool.tell()
            spool.seek(0)
            body = spool
        if declared is not None and received != declared:
            raise _IncompleteBody
        return body

    @staticmethod
    def _environ(scope, body) -> dict:
        server_name, server_port = _host_port(scope.server)
        remote_addr, remote_port = _host_port(scope.client)
        environ = {
            **_STATIC_ENVIRON,
            "REQUEST_METHOD": scope.method,
            # granian gives the path percent-decoded as UTF-8; WSGI wants it as latin-1 (PEP 3333).
            "PATH_INFO": scope.path.encode("utf-8").decode("latin-1"),
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
            "REMOTE_ADDR": remote_addr,
            "REMOTE_PORT": remote_port,
            "wsgi.url_scheme": scope.scheme,
        }
        for name, value in scope.headers.items():
            key = _NOT_HTTP_HEADERS.get(name) or "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        if isinstance(body, bytes):
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))  # also for a chunked body, now complete
        else:
            environ["wsgi.input"] = body
            environ["CONTENT_LENGTH"] = str(body.seek(0, io.SEEK_END))
            body.seek(0)
        return environ

    async def _answer_on_loop(self, environ: dict) -> tuple[int, list, bytes] | None:
        """The application's own answer on the loop (platform_site.on_loop), or None to hand the
        request to a request thread (the body is then rewound for it)."""
        start_response = _StartResponse()
        try:
            result = await answer_on_loop(self.on_loop, environ, start_response)
        except LeaveTheLoop:
            self.on_loop_counts[1].inc()
            environ["wsgi.input"].seek(0)
            return None
        if result is None:  # not one the loop takes up: nothing was read
            return None
        self.on_loop_counts[0].inc()
        return start_response.status, start_response.headers, b"".join(result)

    def _call(self, environ: dict) -> tuple[int, list, bytes | tuple]:
        """Run the application; its answer as bytes, or what _stream needs when it has several chunks."""
        start_response = _StartResponse()
        try:
            result = self.app(environ, start_response)
        finally:
            wsgi_input = environ["wsgi.input"]
            if not isinstance(wsgi_input, io.BytesIO):
                wsgi_input.close()
        streamed = False
        try:
            if isinstance(result, list):
                return start_response.status, start_response.headers, b"".join(result)
            # Django's HttpResponse is one chunk: sent in one piece too. A generator's
            # start_response may run only at its first chunk, so the first chunks are taken here.
            iterator = iter(result)
            first = next(iterator, b"")
            second = next(iterator, None)
            if second is None:
                return start_response.status, start_response.headers, first
            streamed = True
            return start_response.status, start_response.headers, (result, iterator, (first, second))
        finally:
            if not streamed:
                _close(result)

    async def _stream(self, protocol, status: int, headers: list, streamed) -> None:
        result, iterator, chunks = streamed
        try:
            transport = protocol.response_stream(status, headers)
            for chunk in chunks:
                if chunk:
                    await transport.send_bytes(chunk)
            while (chunk := await self._in_thread(next, iterator, None)) is not None:
                if chunk:
                    await transport.send_bytes(chunk)
        finally:
            await self._in_thread(_close, result)


def _settle(future: asyncio.Future, result, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _close(result) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _load(target: str) -> Callable:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute or "application")


def __getattr__(name: str):
    """`application`, made when granian's worker first asks for it (importing this module
    for BufferedWSGI alone loads no application)."""
    if name != "application":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from platform_site.serve import body_timeout_seconds, request_threads

    app = BufferedWSGI(
        _load(os.environ.get("WEB_WSGI_TARGET") or DEFAULT_WSGI_TARGET),
        threads=request_threads(),
        body_timeout=body_timeout_seconds(),
    )
    globals()["application"] = app
    return app
