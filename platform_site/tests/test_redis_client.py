"""platform_site.redis_client's own connection: the settings of the client's URL, redis-py's errors."""

from __future__ import annotations

import os
import socket
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
