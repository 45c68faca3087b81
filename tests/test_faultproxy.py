"""The fault-injection proxy: transparent forwarding, and a dropped reply after Redis ran the command."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import redis.backoff
import redis.retry

from distbatch.faultproxy import FaultProxy
from distbatch.testing import RedisServer


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()  # a private server on a free port, never the shared one
    yield srv
    srv.cleanup()


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultProxy]:
    redis.Redis.from_url(server.url).flushdb()
    with FaultProxy("127.0.0.1", server.port).start() as p:
        yield p


def no_retry_client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))


def test_forwards_plain_commands(proxy: FaultProxy, server: RedisServer) -> None:
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    client = redis.Redis.from_url(proxy.url)
    assert client.set("k", "v")
    assert client.get("k") == b"v"
    assert redis.Redis.from_url(server.url).get("k") == b"v"
    big = b"x" * 1_000_000  # many partial reads in both directions
    client.set("big", big)
    assert client.get("big") == big
    assert proxy.fired == 0
    client.close()


def test_drop_next_reply_after_redis_ran_it(proxy: FaultProxy, server: RedisServer) -> None:
    client = no_retry_client(proxy.port)
    direct = redis.Redis.from_url(server.url)
    assert client.ping()
    proxy.drop_next_reply(b"INCR")
    assert client.get("x") is None  # not matching: goes through, fault stays armed
    assert proxy.fired == 0
    with pytest.raises(redis.ConnectionError):
        client.incr("x")
    assert proxy.fired_event.wait(5)
    assert proxy.fired == 1
    assert direct.get("x") == b"1"  # Redis ran the command; only the reply was lost
    assert client.incr("x") == 2  # disarmed: a new connection through the proxy works again
    assert proxy.fired == 1
    client.close()


def test_drop_all(proxy: FaultProxy, server: RedisServer) -> None:
    client = no_retry_client(proxy.port)
    proxy.drop_all(True)
    for _ in range(3):
        with pytest.raises(redis.ConnectionError):
            client.incr("y")
    proxy.drop_all(False)
    ran = int(redis.Redis.from_url(server.url).get("y") or 0)  # handshake commands may be the ones dropped
    assert client.incr("y") == ran + 1
    assert proxy.fired >= 3
    client.close()


def test_a_private_server_that_never_answers_is_not_left_running() -> None:
    """The tests' own redis-server: one that started but never answered a PING (here: it wants a
    password) was left running when `start` gave up."""
    server = RedisServer("--requirepass", "not-given")
    with pytest.raises(RuntimeError, match="did not start"):
        server.start()
    assert server.proc is not None and server.proc.poll() is not None
