"""platform_site.redis_client's own connection: the settings of the client's URL, redis-py's errors."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid

import pytest
import redis
from django.conf import settings

from platform_site import redis_client


@pytest.fixture
def client_for():
    made = []

    def make(url: str, **options) -> redis.Redis:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1, **options)
        made.append(client)
        return client

    yield make
    redis_client.reset()
    for client in made:
        client.close()


def _url(*, userinfo: str = "", db: int) -> str:
    options = redis.Redis.from_url(settings.REDIS_URL).get_connection_kwargs()
    return f"redis://{userinfo}{options.get('host', 'localhost')}:{options.get('port', 6379)}/{db}"


def test_the_hot_connection_selects_the_urls_database(client_for):
    key = f"mh:test:select:{uuid.uuid4().hex}"
    database = redis.Redis.from_url(settings.REDIS_URL).get_connection_kwargs().get("db", 0)
    client = client_for(_url(db=database))
    try:
        assert redis_client.round_trip(client, ("SET", key, "here"), ("GET", key)) == [b"OK", b"here"]
        assert client.get(key) == b"here"  # redis-py's own connection, same database
    finally:
        client.delete(key)


@pytest.fixture
def redis_user(client_for):
    """A password-protected Redis user for this test only (removed at the end)."""
    admin = client_for(settings.REDIS_URL)
    name, password = f"mh-test-{os.getpid()}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    yield name, password
    admin.acl_deluser(name)


def test_the_hot_connection_authenticates_with_the_urls_user_and_password(client_for, redis_user):
    name, password = redis_user
    client = client_for(_url(userinfo=f"{name}:{password}@", db=0))
    assert redis_client.round_trip(client, ("ACL", "WHOAMI")) == [name.encode()]


def test_a_wrong_password_is_redis_pys_authentication_error(client_for, redis_user):
    name, _ = redis_user
    client = client_for(_url(userinfo=f"{name}:wrong@", db=0))
    with pytest.raises(redis.AuthenticationError):
        redis_client.round_trip(client, ("PING",))
    assert getattr(redis_client._hot, "connection", None) is None


def test_an_unreachable_server_is_redis_pys_connection_error(client_for):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: the connection is refused
        client = client_for(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(redis.ConnectionError):
            redis_client.round_trip(client, ("PING",))


@pytest.mark.parametrize(
    "command, error",
    [
        pytest.param(("EVALSHA", "0" * 40, 0), redis.exceptions.NoScriptError, id="noscript"),
        pytest.param(("NOSUCHCOMMAND",), redis.ResponseError, id="err"),
    ],
)
def test_error_replies_are_redis_pys_exception_classes_in_place_of_the_reply(client_for, command, error):
    client = client_for(settings.REDIS_URL)
    replies = redis_client.round_trip(client, command, ("PING",))
    assert type(replies[0]) is error
    assert replies[1] == b"PONG"  # the next reply is read all the same


def test_a_thread_keeps_its_connection_until_the_client_changes(client_for):
    first = client_for(settings.REDIS_URL)
    redis_client.round_trip(first, ("PING",))
    hot = redis_client._hot.connection
    redis_client.round_trip(first, ("PING",))
    assert redis_client._hot.connection is hot
    other = client_for(settings.REDIS_URL)
    redis_client.round_trip(other, ("PING",))
    assert redis_client._hot.connection is not hot
    assert hot.sock.fileno() == -1  # the previous one was closed


def _on_loop(*requests):
    """Run each function as a request the event loop answers (platform_site.on_loop), all at once;
    their outcomes (a value, or the exception raised) in order."""
    from platform_site.on_loop import answer_on_loop

    async def run():
        return await asyncio.gather(*(answer_on_loop(request) for request in requests), return_exceptions=True)

    return asyncio.run(run())


def test_requests_on_the_loop_share_one_connection_and_each_gets_its_own_replies(client_for):
    client = client_for(settings.REDIS_URL)
    key = f"mh:test:loop:{uuid.uuid4().hex}"
    started = time.monotonic()
    try:
        outcomes = _on_loop(
            lambda: redis_client.round_trip(client, ("BLPOP", key + ":empty", 0.15)),  # Redis answers this one late
            *(lambda n=n: redis_client.round_trip(client, ("INCR", key), ("ECHO", f"r{n}")) for n in range(5)),
        )
    finally:
        client.delete(key)
    assert time.monotonic() - started < 0.6
    assert outcomes[0] == [None]
    assert sorted(reply[0] for reply in outcomes[1:]) == [1, 2, 3, 4, 5]  # each counted once
    assert [reply[1] for reply in outcomes[1:]] == [b"r0", b"r1", b"r2", b"r3", b"r4"]  # in order, each its own


def test_a_request_on_the_loop_suspends_while_another_runs(client_for):
    """The loop answers other requests while one waits for Redis: the later one finishes first."""
    client = client_for(settings.REDIS_URL)
    finished = []

    def slow():
        redis_client.round_trip(client, ("BLPOP", f"mh:test:loop:{uuid.uuid4().hex}", 0.2))
        finished.append("slow")

    def quick():
        finished.append("quick")  # no Redis at all

    _on_loop(slow, quick)
    assert finished == ["quick", "slow"]


def test_a_reply_that_never_comes_drops_the_loops_connection_and_the_next_request_gets_a_new_one(client_for):
    client = client_for(settings.REDIS_URL)  # socket_timeout=1
    seen = {}

    def stuck():
        seen["connection"] = redis_client._hot_connection(client)
        return redis_client.round_trip(client, ("BLPOP", f"mh:test:loop:{uuid.uuid4().hex}", 5))

    def behind_it():
        return redis_client.round_trip(client, ("PING",))

    started = time.monotonic()
    outcomes = _on_loop(stuck, behind_it)
    waited = time.monotonic() - started
    assert isinstance(outcomes[0], redis.TimeoutError) and isinstance(outcomes[1], redis.TimeoutError)
    assert 1.0 <= waited < 3.0  # one or two socket timeouts without a reply, not the 5 s the command asked
    assert seen["connection"].sock.fileno() == -1  # closed
    assert _on_loop(behind_it) == [[b"PONG"]]  # a new connection
    assert redis_client._hot_connection(client) is not seen["connection"]


def test_a_server_that_closes_the_loops_connection_fails_its_requests_at_once(client_for):
    client = client_for(settings.REDIS_URL)
    admin = client_for(settings.REDIS_URL)
    name = f"mh-loop-{uuid.uuid4().hex[:8]}"

    def named():
        redis_client.round_trip(client, ("CLIENT", "SETNAME", name))
        return redis_client.round_trip(client, ("BLPOP", f"mh:test:loop:{uuid.uuid4().hex}", 5))

    def killer():
        time.sleep(0.05)  # blocks the loop: the BLPOP is on its way
        (found,) = [entry["id"] for entry in admin.client_list() if entry.get("name") == name]
        admin.client_kill_filter(_id=found)

    started = time.monotonic()
    outcomes = _on_loop(named, killer)
    assert isinstance(outcomes[0], redis.ConnectionError), outcomes
    assert time.monotonic() - started < 0.9  # the close was seen, not waited out


def test_a_thread_that_runs_a_new_loop_has_it_read_its_connection(client_for):
    client = client_for(settings.REDIS_URL)
    for _ in range(3):  # asyncio.run: a new loop each time, the same thread and connection
        assert _on_loop(lambda: redis_client.round_trip(client, ("ECHO", "again"))) == [[b"again"]]


def test_the_loops_connection_is_non_blocking_and_still_writes_more_than_the_kernel_holds(client_for):
    client = client_for(settings.REDIS_URL)
    key = f"mh:test:loop:{uuid.uuid4().hex}"
    big = b"x" * (16 << 20)  # more than a socket's send buffer: the write must finish, waiting
    try:
        (replies,) = _on_loop(lambda: redis_client.round_trip(client, ("SET", key, big), ("STRLEN", key)))
        assert replies == [b"OK", len(big)]
        connection = redis_client._hot_connection(client)
        assert connection.sock.gettimeout() == 0.0  # the loop reads only when there is something
        # The same thread outside any loop: a round trip that waits, on the same connection.
        assert redis_client.round_trip(client, ("STRLEN", key)) == [len(big)]
        assert redis_client._hot_connection(client) is connection
    finally:
        client.delete(key)
