from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import fakeredis
import pytest
import redis

from distbatch import Batcher, ManualClock

from .redis_server import LocalCluster, RedisServer

_namespaces = itertools.count()


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


@pytest.fixture
def namespace() -> str:
    return f"t{next(_namespaces)}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000)


@pytest.fixture
def make_batcher(
    client: redis.Redis, namespace: str, clock: ManualClock, redis_server: RedisServer
) -> Callable[..., Batcher]:
    def make(**kw: object) -> Batcher:
        kw.setdefault("namespace", namespace)
        kw.setdefault("clock", clock)
        if isinstance(client, redis.RedisCluster):  # RQ lives on a standalone Redis
            kw.setdefault("queue_client", redis.Redis.from_url(redis_server.url))
        return Batcher(client, **kw)  # type: ignore[arg-type]

    return make


@pytest.fixture
def batcher(make_batcher: Callable[..., Batcher]) -> Batcher:
    return make_batcher()
