"""The shared Redis connection for the hot path, with a bound on every call and a breaker.

Every call has a socket timeout (REDIS_SOCKET_TIMEOUT). After a failure the breaker opens
for REDIS_RETRY_SECONDS: callers get None at once and take their documented fallback
(no prediction cache, rate limits fail open, records buffered in-process), instead of each
request paying the timeout. `modelhost_cache_up` says which state a process is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator

import hiredis
import redis
from django.conf import settings
from redis import exceptions as redis_exceptions

from platform_site.metrics import CACHE_UP
from platform_site.on_loop import suspendable_loop, wait_on_loop

logger = logging.getLogger(__name__)

_client: redis.Redis | None = None
_open_until = 0.0


def get_redis() -> redis.Redis | None:
    """The client, or None when Redis is not configured or the breaker is open."""
    global _client
    if not settings.REDIS_URL:
        return None
    if _open_until and time.monotonic() < _open_until:
        return None
    if _client is None:
        _client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
            health_check_interval=30,
        )
    return _client


def report_failure(exc: Exception) -> None:
    """Open the breaker after a Redis error; the next call after the pause tries again."""
    global _open_until, _reported_up
    _open_until = time.monotonic() + settings.REDIS_RETRY_SECONDS
    CACHE_UP.set(0)
    _reported_up = False
    logger.warning("redis unavailable, falling back for %.1fs: %s", settings.REDIS_RETRY_SECONDS, exc)


_reported_up = False


def report_success() -> None:
    global _open_until, _reported_up
    if _open_until:
        _open_until = 0.0
    if not _reported_up:  # a multiprocess gauge write costs a lock and a file write: only on change
        CACHE_UP.set(1)
        _reported_up = True


def reset() -> None:
    """Forget the client and close the breaker (tests, and after a fork)."""
    global _client, _open_until, _reported_up
    hot = getattr(_hot, "connection", None)
    if hot is not None and hot.pid == os.getpid():
        _drop(hot, None)
    if _client is not None:
        _client.close()
    _client = None
    _open_until = 0.0
    _reported_up = False


class _HotConnection:
    """One thread's hot-path connection, and the replies it has not read yet.

    `pending` holds, in send order, how many replies each deferred send expects and the
    callback that takes them. They are read before the next round trip's own replies, or by
    settle(). The connection is not shared while it holds unread replies: each thread keeps
    its own, closed when the thread ends.

    The socket is this class's own, opened with the client's connection settings (those
    redis-py parsed from REDIS_URL: address, TLS, credentials, database, timeouts; see
    _open_socket), and commands and replies go through hiredis's public packer and reader.
    redis-py's layers over them (per-command encoding and buffering, health-check and
    error-mapping wrappers, a host string built for each reply) cost 8 % of an iris
    prediction's CPU: 322-342 against 297-298 us in process, two runs each of
    `bench/profile_hotpath.py --loop-only --repeat 40 --requests 250`; owning the socket
    rather than borrowing redis-py's keeps that without reaching into its private parts.
    Error replies come back as redis-py's exception classes (NoScriptError, ResponseError,
    ...), in place of the reply.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool  # which client's settings this connection follows
        self.sock = _open_socket(client.get_connection_kwargs(), self.pool.connection_class)
        self.plain_tcp = _plain_tcp(self.sock)
        self.reader = hiredis.Reader(protocolError=redis.exceptions.InvalidResponse, replyError=_reply_error)
        self.buffer = bytearray(_READ_SIZE)
        self.pid = os.getpid()
        self.pending: deque[tuple[int, Callable[[list | BaseException], None]]] = deque()
        self.partial: list = []  # the replies read so far for pending[0] (read_available)
        self.watched_by: asyncio.AbstractEventLoop | None = None  # the loop that reads it (watch)
        self.watchdog: asyncio.TimerHandle | None = None
        self.nonblocking = False  # set by watch
        self.replies_read = 0  # entries settled by read_available, for the watchdog
        self.pushed_at_check = False
        self.timeout = client.get_connection_kwargs().get("socket_timeout")
        self.last_used = time.monotonic()
        weakref.finalize(self, _close_socket, self.sock, self.pid)
        try:
            self._hello(client.get_connection_kwargs())
        except BaseException:
            self.close()
            raise

    def _hello(self, options: dict) -> None:
        """AUTH, SELECT and CLIENT SETNAME as the client's settings ask, in one round trip."""
        commands = []
        username, password = options.get("username"), options.get("password")
        provider = options.get("credential_provider")
        if provider is not None:
            credentials = provider.get_credentials()
            username, password = (None, credentials[0]) if len(credentials) == 1 else credentials
        if password:
            commands.append(("AUTH", username, password) if username else ("AUTH", password))
        if options.get("db"):
            commands.append(("SELECT", options["db"]))
        if options.get("client_name"):
            commands.append(("CLIENT", "SETNAME", options["client_name"]))
        if not commands:
            return
        self.send(tuple(commands))
        for reply in self.read(len(commands)):
            if isinstance(reply, redis.RedisError):
                raise reply

    def close(self) -> None:
        if self.pid == os.getpid():
            self._unwatch()
        _close_socket(self.sock, self.pid)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have `loop` read the replies as they arrive (read_available), for requests it suspended,
        and look every socket timeout whether any came (_check_progress)."""
        if self.watched_by is not loop:
            self._unwatch()  # a loop that has ended (a test's asyncio.run)
            loop.add_reader(self.sock, _read_when_ready, self)
            self.watched_by = loop
            if not isinstance(self.sock, ssl.SSLSocket):
                # The loop reads only when the socket has something, and a small write never
                # waits: non-blocking, each is one system call, where a socket timeout adds a
                # poll() before it (and hands the GIL over twice).
                self.sock.setblocking(False)
                self.nonblocking = True
        if self.watchdog is None and self.timeout:
            self.pushed_at_check = False
            self.watchdog = loop.call_later(self.timeout, _check_progress, self, self.replies_read)

    def _unwatch(self) -> None:
        if self.watched_by is None:
            return
        if self.nonblocking:
            self.sock.settimeout(self.timeout)
            self.nonblocking = False
        if not self.watched_by.is_closed():
            self.watched_by.remove_reader(self.sock)
            if self.watchdog is not None:
                self.watchdog.cancel()
        self.watched_by = self.watchdog = None

    def send(self, commands: tuple) -> None:
        self._write(commands, 0)

    def _write(self, commands: tuple, flags: int) -> None:
        data = b"".join(map(hiredis.pack_command, commands))
        try:
            if self.nonblocking:
                sent = _sent(self.sock, data, flags)
                if sent < len(data):  # the kernel's buffer is full: the rest within the timeout
                    with self.blocking():
                        self.sock.sendall(memoryview(data)[sent:], flags)
            else:
                self.sock.sendall(data, flags)
        except OSError as exc:
            raise _redis_error(exc, "writing to") from exc

    @contextlib.contextmanager
    def blocking(self) -> Iterator[None]:
        """Reads and writes that wait (within the socket timeout) on a socket its loop has made
        non-blocking (watch): a thread's round trip on the loop's thread, an overfull write."""
        if not self.nonblocking:
            yield
            return
        self.sock.settimeout(self.timeout)
        try:
            yield
        finally:
            self.sock.setblocking(False)

    def send_more(self, commands: tuple) -> None:
        """Queue `commands` in the kernel's send buffer, to leave with the next send (MSG_MORE).

        Linux holds data sent with MSG_MORE until the socket's next send without it, at most
        about 200 ms, and sends it when the socket is closed, a process's exit included. So
        the commands are as safe from a crash of this process as after a plain send, and the
        next round trip carries them in the same segment: one transmission, and one read on
        Redis's side, per request instead of two. Where the flag does not apply (TLS, Unix
        sockets, other systems) this is a plain send.
        """
        self._write(commands, _MSG_MORE if self.plain_tcp else 0)

    def push(self) -> None:
        """Send what send_more() left in the kernel's buffer now (setting TCP_NODELAY pushes it)."""
        if self.plain_tcp:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read(self, count: int) -> list:
        if self.nonblocking:
            with self.blocking():
                return self._read(count)
        return self._read(count)

    def _read(self, count: int) -> list:
        replies = []
        reader = self.reader
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:
                self._receive()
            else:
                replies.append(reply)
        return replies

    def _receive(self) -> bool:
        """One read from the socket into the reader; False when a non-blocking socket had nothing."""
        try:
            received = self.sock.recv_into(self.buffer)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError as exc:
            raise _redis_error(exc, "reading from") from exc
        if not received:
            raise redis.ConnectionError("Connection closed by server.")
        self.reader.feed(self.buffer, 0, received)
        return True

    def _settle_complete(self) -> None:
        """Settle, in order, every pending entry whose replies the reader holds in full; the
        replies of a first incomplete one are kept in `partial` for the next read."""
        while self.pending:
            count, _ = self.pending[0]
            while len(self.partial) < count:
                reply = self.reader.gets()
                if reply is False:
                    return
                self.partial.append(reply)
            self._settle_first(self.partial)

    def read_pending(self) -> None:
        """Read until every pending entry is settled (waiting, within the socket timeout)."""
        while self.pending:
            count, _ = self.pending[0]
            self._settle_first(self.partial + self.read(count - len(self.partial)))

    def _settle_first(self, replies: list) -> None:
        """Hand the first pending entry its replies."""
        _, settle = self.pending.popleft()
        self.partial = []
        self.replies_read += 1
        _settle(settle, replies)

    def read_available(self) -> None:
        """Read what the socket holds (its loop found it readable) and settle every pending entry
        whose replies are complete; the rest wait for the next read."""
        # TLS: records decrypted past what one read returned are not the socket's to signal.
        if self._receive():
            while isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                self._receive()
        self._settle_complete()

    def fail_pending(self, exc: BaseException) -> None:
        self.partial = []
        while self.pending:
            _, settle = self.pending.popleft()
            _settle(settle, exc)


def _open_socket(options: dict, connection_class: type) -> socket.socket:
    """A connected socket to the server `options` (a client's connection settings) name.

    TCP (with TCP_NODELAY, as redis-py sets it), TLS for rediss:// URLs, or a Unix socket;
    socket_connect_timeout bounds the connection, socket_timeout every read and write after.
    """
    timeout = options.get("socket_timeout")
    connect_timeout = options.get("socket_connect_timeout") or timeout
    try:
        if issubclass(connection_class, redis.UnixDomainSocketConnection):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(connect_timeout)
            sock.connect(options["path"])
        else:
            host = options.get("host", "localhost")
            sock = socket.create_connection((host, options.get("port", 6379)), timeout=connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if options.get("socket_keepalive"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if issubclass(connection_class, redis.SSLConnection):
                sock = _tls_context(options).wrap_socket(sock, server_hostname=host)
        sock.settimeout(timeout)
    except OSError as exc:
        raise _redis_error(exc, "connecting to") from exc
    return sock


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _tls_context(options: dict) -> ssl.SSLContext:
    """The TLS settings of a rediss:// URL, with redis-py's defaults (verify the certificate and host)."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path"))
    requirement = options.get("ssl_cert_reqs", "required")
    requirement = _CERT_REQS[requirement.lower()] if isinstance(requirement, str) else requirement
    context.check_hostname = bool(options.get("ssl_check_hostname", True)) and requirement != ssl.CERT_NONE
    context.verify_mode = requirement
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password"))
    return context


# redis-py's exception class for each error code Redis puts first in an error reply.
_ERROR_CLASSES = {
    "NOSCRIPT": redis_exceptions.NoScriptError,
    "WRONGPASS": redis_exceptions.AuthenticationError,
    "NOAUTH": redis_exceptions.AuthenticationError,
    "NOPERM": redis_exceptions.NoPermissionError,
    "LOADING": redis_exceptions.BusyLoadingError,
    "READONLY": redis_exceptions.ReadOnlyError,
    "OOM": redis_exceptions.OutOfMemoryError,
    "EXECABORT": redis_exceptions.ExecAbortError,
}


def _reply_error(message: str) -> redis.RedisError:
    """The exception an error reply stands for, as redis-py would raise it."""
    code, _, rest = message.partition(" ")
    error = _ERROR_CLASSES.get(code)
    if error is not None:
        return error(rest)
    if message.startswith("ERR invalid password"):
        return redis_exceptions.AuthenticationError(rest)
    return redis.ResponseError(rest if code == "ERR" else message)


def _close_socket(sock: socket.socket, pid: int) -> None:
    """Close `sock` in the process that opened it (a forked child leaves its parent's alone)."""
    if os.getpid() != pid:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the server, or never fully connected
        pass
    sock.close()


def _redis_error(exc: OSError, doing: str) -> redis.RedisError:
    """redis-py's error for a socket error (the caller's _drop closes the connection)."""
    if isinstance(exc, socket.timeout):
        return redis.TimeoutError(f"Timeout {doing} socket")
    return redis.ConnectionError(f"Error {doing} socket: {exc}")


def _plain_tcp(sock) -> bool:
    """A plain TCP socket (not TLS, not a Unix socket): where MSG_MORE and TCP_NODELAY apply."""
    return type(sock) is socket.socket and sock.family in (socket.AF_INET, socket.AF_INET6)


def _settle(settle: Callable[[list | BaseException], None], outcome: list | BaseException) -> None:
    try:
        settle(outcome)
    except Exception:  # one caller's bookkeeping must not break the next request's round trip
        logger.exception("a deferred Redis reply's handler failed")


_hot = threading.local()
MAX_PENDING_SENDS = 64
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_READ_SIZE = 65536
# A connection unused for this long is checked (a PING) before the next round trip.
IDLE_CHECK_SECONDS = 5.0


def _hot_connection(client: redis.Redis) -> _HotConnection:
    hot = getattr(_hot, "connection", None)
    if hot is None or hot.pool is not client.connection_pool or hot.pid != os.getpid():
        if hot is not None and hot.pid == os.getpid():
            _drop(hot, None)
        hot = _hot.connection = _HotConnection(client)
    return hot


def _drop(hot: _HotConnection, exc: BaseException | None) -> None:
    """Close and forget this thread's connection. With no `exc`, the replies it owes are read
    first; with one (or if reading fails), their callers get the error."""
    if exc is None and hot.pending:
        try:
            hot.push()
            hot.read_pending()
        except REDIS_ERRORS as error:
            exc = error
    hot.close()
    if exc is not None:
        hot.fail_pending(exc)
    if getattr(_hot, "connection", None) is hot:
        _hot.connection = None


def _sent(sock: socket.socket, data: bytes, flags: int) -> int:
    try:
        return sock.send(data, flags)
    except BlockingIOError:
        return 0


def _check_progress(hot: _HotConnection, replies_read: int) -> None:
    """The watchdog of a connection its loop reads: while it owes replies, one must arrive every
    socket timeout, as a blocking read's timeout asks of each read; otherwise the connection is
    dropped and every reply it owes is lost (their callers take their fallbacks). Commands
    held back by send_later's MSG_MORE are pushed out at the first look."""
    hot.watchdog = None
    if not hot.pending:
        return
    if hot.replies_read == replies_read:
        if hot.pushed_at_check:
            _drop(hot, redis.TimeoutError("Timeout reading from socket"))
            return
        try:
            hot.push()
        except OSError as exc:
            _drop(hot, _redis_error(exc, "writing to"))
            return
        hot.pushed_at_check = True
    else:
        hot.pushed_at_check = False
    hot.watchdog = hot.watched_by.call_later(hot.timeout, _check_progress, hot, hot.replies_read)


def _read_when_ready(hot: _HotConnection) -> None:
    """The loop's reader for a connection it watches: settle what arrived; a broken connection is dropped."""
    try:
        hot.read_available()
    except REDIS_ERRORS as exc:
        _drop(hot, exc)


def round_trip(client: redis.Redis, *commands: tuple) -> list:
    """Send `commands` on this thread's connection and read their replies: one round trip.

    The hot path's Redis calls go through here rather than through redis-py's command
    methods and pipeline object: those wrap each call in retry, event and response-callback
    layers that cost 80-130 µs of CPU per call on this project's machine, more than the
    socket I/O itself (bench/RESULTS.md). The connection follows the client's settings and
    timeouts; commands and replies go through hiredis (see _HotConnection). Replies are raw
    (bytes, ints, lists); an error reply is returned in its place as a ResponseError, so one
    bad command never leaves the others' replies unread. A connection idle for
    IDLE_CHECK_SECONDS is checked first (_checked_after_idle). Replies owed to earlier
    send_later() calls are read first (they are usually in the socket already). A connection
    error closes the connection, fails the owed replies and is raised.

    A request the event loop answers (platform_site.on_loop) does not wait here: the commands
    are sent, and the request is suspended until the loop, which watches the connection, has
    read their replies (_suspended_round_trip).
    """
    hot = _hot_connection(client)
    if time.monotonic() - hot.last_used > IDLE_CHECK_SECONDS:
        hot = _checked_after_idle(client, hot)
    loop = suspendable_loop()
    if loop is not None:
        return _suspended_round_trip(hot, commands, loop)
    try:
        hot.send(commands)
        hot.read_pending()
        replies = hot.read(len(commands))
    except BaseException as exc:
        _drop(hot, exc)
        raise
    hot.last_used = time.monotonic()
    return replies


def _suspended_round_trip(hot: _HotConnection, commands: tuple, loop: asyncio.AbstractEventLoop) -> list:
    """round_trip for a request the loop answers: send, then suspend it until the loop has read
    the replies. The loop thread's one connection carries every such request's commands in turn,
    and the replies come back in the same order (pending). A connection that owes replies and
    sends none for one to two socket timeouts is dropped (_check_progress), as a blocking read's
    timeout drops it: every reply it owes is lost, and their callers take their fallbacks."""
    future = loop.create_future()

    def settle(outcome: list | BaseException) -> None:
        if future.done():  # the request was cancelled meanwhile
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    _send_owing(hot, commands, settle, more=False)
    hot.watch(loop)
    replies = wait_on_loop(future)
    hot.last_used = time.monotonic()
    return replies


def _send_owing(hot: _HotConnection, commands: tuple, settle: Callable, *, more: bool) -> None:
    """Send `commands` (held for the next send with `more`), then owe `settle` their replies; a
    failed send drops the connection and raises."""
    try:
        if more:
            hot.send_more(commands)
        else:
            hot.send(commands)
    except BaseException as exc:
        _drop(hot, exc)
        raise
    hot.pending.append((len(commands), settle))


def _checked_after_idle(client: redis.Redis, hot: _HotConnection) -> _HotConnection:
    """Check a connection idle for IDLE_CHECK_SECONDS before sending on it again.

    Redis may have dropped it meanwhile (a restart, a failover, an idle timeout). The replies
    it still owes are read, then a PING: if the connection is dead, the owed replies' callers
    get the error (a record is kept in process), and the request goes on over a new
    connection instead of failing open, which would have opened the breaker for every
    request of the next seconds.
    """
    try:
        hot.push()
        hot.read_pending()
        # The replies may have been waiting in the socket before Redis dropped it: a PING tells.
        hot.send((("PING",),))
        hot.read(1)
    except REDIS_ERRORS as exc:
        _drop(hot, exc)
        return _hot_connection(client)
    return hot


def send_later(client: redis.Redis, commands: tuple, settle: Callable[[list | BaseException], None]) -> None:
    """Send `commands` with this thread's next round trip and read their replies then.

    Once this returns, the commands are in the kernel's socket buffer: Redis receives them
    with the next round trip, within about 200 ms if none comes, and even if this process
    dies the next instant (a process's exit closes its sockets after sending what they hold;
    see _HotConnection.send_more). `settle` gets the replies (a list, error replies as
    ResponseError) when the next round trip or settle() reads them, or the exception that
    lost them (then whether Redis applied the commands is unknown). A send that fails raises
    at once, and `settle` is not called.
    """
    hot = _hot_connection(client)
    _send_owing(hot, commands, settle, more=True)
    hot.last_used = time.monotonic()
    if len(hot.pending) >= MAX_PENDING_SENDS:  # a thread that only sends: read what it owes
        settle_pending()


def settle_pending() -> None:
    """Read every reply this thread's connection still owes to send_later()'s callers."""
    hot = getattr(_hot, "connection", None)
    if hot is None or not hot.pending:
        return
    try:
        hot.push()
        hot.read_pending()
    except REDIS_ERRORS as exc:
        _drop(hot, exc)
        report_failure(exc)


def run_script(client: redis.Redis, script: str, sha: str, keys: list, args: list):
    """EVALSHA in one round trip; loads the script and retries once if Redis lost it."""
    command = ("EVALSHA", sha, len(keys), *keys, *args)
    reply = round_trip(client, command)[0]
    if isinstance(reply, redis.exceptions.NoScriptError):
        client.script_load(script)
        reply = round_trip(client, command)[0]
    if isinstance(reply, redis.ResponseError):
        raise reply
    return reply


REDIS_ERRORS = (redis.RedisError, OSError)
