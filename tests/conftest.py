from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio

from distbatch import Batcher, ManualClock
from distbatch.faultproxy import FaultProxy

from .aio_facade import LoopThread, SyncFront
from .redis_server import LocalCluster, RedisServer

_namespaces = itertools.count()


@pytest.fixture(autouse=True, scope="session")
def _never_the_shared_redis() -> Iterator[None]:
    """The CLI's default URL is 127.0.0.1:6379, a Redis this machine shares, which no test may
    touch: a CLI call or a child process that forgets its --redis-url reaches a closed port (and
    fails, naming it) instead. Tests give their own servers' URLs explicitly."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTBATCH_REDIS_URL", "redis://127.0.0.1:1/0")
        yield


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """A 3-master Redis Cluster on loopback ports, started once for the session."""
    cluster = LocalCluster(3).start()
    yield cluster
    cluster.cleanup()


@pytest.fixture(params=["redis", "fakeredis", "cluster"])
def client(request: pytest.FixtureRequest, redis_server: RedisServer, fake_server: fakeredis.FakeServer
           ) -> Iterator[redis.Redis]:
    """The same behaviour tests run on a real redis-server, on fakeredis and on a real 3-master
    Redis Cluster (where a namespace has 3 shards, one per master)."""
    if request.param == "redis":
        c: redis.Redis = redis.Redis.from_url(redis_server.url)
    elif request.param == "fakeredis":
        c = fakeredis.FakeRedis(server=fake_server)
    else:
        c = request.getfixturevalue("local_cluster").client()
    yield c
    c.close()


@pytest.fixture(params=["redis", "fakeredis"])
def one_redis(request: pytest.FixtureRequest, redis_server: RedisServer, fake_server: fakeredis.FakeServer
              ) -> redis.Redis:
    """`client` without the cluster: for what only a sync client of one Redis does."""
    if request.param == "redis":
        return redis.Redis.from_url(redis_server.url)
    return fakeredis.FakeRedis(server=fake_server)


@pytest.fixture
def namespace() -> str:
    return f"t{next(_namespaces)}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000)


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A loopback proxy to the test Redis that can drop a reply after Redis ran the command."""
    with FaultProxy("127.0.0.1", redis_server.port).start() as p:
        yield p


@pytest.fixture(scope="session")
def aio_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture
def api() -> str:
    """Which API `make_batcher` builds; behaviour modules override it to run both."""
    return "sync"


def _async_client(client: redis.Redis, redis_server: RedisServer, fake_server: fakeredis.FakeServer) -> Any:
    if isinstance(client, redis.RedisCluster):
        node = client.get_default_node()  # type: ignore[no-untyped-call]
        return redis.asyncio.RedisCluster(host=node.host, port=node.port)
    if isinstance(client, fakeredis.FakeRedis):
        return fakeredis.FakeAsyncRedis(server=fake_server)
    return redis.asyncio.Redis.from_url(redis_server.url)


@pytest.fixture
def make_batcher(
    client: redis.Redis, namespace: str, clock: ManualClock, redis_server: RedisServer, api: str,
    request: pytest.FixtureRequest, fake_server: fakeredis.FakeServer,
) -> Iterator[Callable[..., Batcher]]:
    fronts: list[SyncFront] = []

    def make(**kw: object) -> Batcher:
        kw.setdefault("namespace", namespace)
        kw.setdefault("clock", clock)
        if isinstance(client, redis.RedisCluster):  # RQ lives on a standalone Redis
            kw.setdefault("queue_client", redis.Redis.from_url(redis_server.url))
        if api == "async":
            front = SyncFront(request.getfixturevalue("aio_loop"),
                              lambda: _async_client(client, redis_server, fake_server), client, **kw)
            fronts.append(front)
            return front  # type: ignore[return-value]
        return Batcher(client, **kw)  # type: ignore[arg-type]

    yield make
    for front in fronts:
        front.close()


@pytest.fixture
def batcher(make_batcher: Callable[..., Batcher]) -> Batcher:
    return make_batcher()


def _command_names(packed: Any) -> list[str]:
    """The command names in what one send carries (RESP arrays of bulk strings)."""
    data = b"".join(p if isinstance(p, bytes) else p.encode() for p in
                    ([packed] if isinstance(packed, bytes | str) else packed))
    names, i = [], 0
    while i < len(data):
        assert data[i:i + 1] == b"*", data[i:i + 40]
        end = data.index(b"\r\n", i)
        argc, i = int(data[i + 1:end]), end + 2
        for a in range(argc):
            end = data.index(b"\r\n", i)
            size = int(data[i + 1:end])
            if a == 0:
                names.append(data[end + 2:end + 2 + size].decode())
            i = end + 2 + size + 2
    return names


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every send on a sync redis-py connection from here on, as the command names it carries:
    one entry per round trip, whichever path (redis-py's own or distbatch's direct one) sent it."""
    sent: list[list[str]] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def spy(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(_command_names(command))
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", spy)
    return sent
