"""A namespace's shard layout is one for every process on it, whichever starts first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from distbatch import Batcher, ConfigError
from distbatch.keys import Keys

from .processes import Procs, delivered, wait_for
from .redis_server import RedisServer


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.cleanup()


def test_an_instance_that_settled_on_one_shard_keeps_the_next_from_fixing_four(
        redis_server: RedisServer, namespace: str) -> None:
    """The first instance settled on one shard and stored nothing, so a second asking for four
    fixed four: the two wrote and read different keys for good, and neither said a word."""
    client = redis.Redis.from_url(redis_server.url)
    first = Batcher(client, namespace=namespace, handoff=False)
    assert first.layout.count == 1
    with pytest.raises(ConfigError) as err:
        Batcher(client, namespace=namespace, shards=4, handoff=False)
    assert err.value.code == "shards_mismatch" and "shards=4" in str(err.value)
    assert "--shards" in str(err.value)
    assert Batcher(client, namespace=namespace, shards=1, handoff=False).layout == first.layout


def test_a_look_that_must_not_write_stores_no_layout(redis_server: RedisServer, namespace: str) -> None:
    client = redis.Redis.from_url(redis_server.url)
    assert Batcher(client, namespace=namespace, handoff=False, fix_layout=False).layout.count == 1
    assert not client.exists(Keys(namespace).meta)
    assert Batcher(client, namespace=namespace, shards=4, handoff=False).layout.count == 4  # still free


def test_stats_on_a_typod_namespace_writes_nothing(redis_server: RedisServer, namespace: str) -> None:
    from click.testing import CliRunner

    from distbatch.cli import main as cli

    out = CliRunner().invoke(cli, ["stats", "--json", "--redis-url", redis_server.url, "--namespace",
                                   namespace])
    assert out.exit_code == 0, out.output
    assert redis.Redis.from_url(redis_server.url).keys(f"*{namespace}*") == []


def up(client: redis.Redis, namespace: str) -> bool:
    """The worker's and the sweeper's heartbeats are in: both read the layout."""
    return bool(client.zcard(Keys(namespace).workers) and client.zcard(Keys(namespace).sweepers))


def test_workers_and_sweepers_started_before_the_app(server: RedisServer, tmp_path: Path) -> None:
    """The usual start order: the fleet first (it waits for bindings), then the app. Without
    --shards the fleet fixes one shard and an app asking for four is told so; with --shards 4
    everyone agrees, and every event is delivered."""
    client = redis.Redis.from_url(server.url)
    with Procs(server.url, "early", tmp_path) as procs:
        procs.worker()
        procs.sweeper()
        wait_for(lambda: up(client, "early"), 30, "the worker and the sweeper up", procs.logs)
        with pytest.raises(ConfigError) as err:
            Batcher.from_url(server.url, namespace="early", shards=4)
        assert err.value.code == "shards_mismatch"
    with Procs(server.url, "early4", tmp_path) as procs:
        procs.worker("--shards", "4")
        procs.sweeper("--shards", "4")
        wait_for(lambda: up(client, "early4"), 30, "the worker and the sweeper up", procs.logs)
        app = Batcher.from_url(server.url, namespace="early4", shards=4)
        app.register("e", version="v1", source="s", handler="tests.handlers.record",
                     batch={"count": 4, "window": "300ms", "key": "k"})
        app.emit_many("s", [{"k": i % 7, "i": i} for i in range(43)])  # 6 count batches + 7 windows
        wait_for(lambda: sum(len(r["events"]) for r in delivered(client)) >= 43, 30, "43 events delivered",
                 procs.logs)
        events = [e for r in delivered(client) for e in r["events"]]
        assert len(events) == len(set(events)) == 43
        assert {r["reason"] for r in delivered(client)} == {"count", "expired"}


def test_a_sharded_namespace_whose_layout_was_lost_is_said_so_not_taken_for_a_new_one(
        redis_server: RedisServer, namespace: str) -> None:
    """With `{ns}:meta` deleted (or evicted), every process started after took the namespace for
    a new one-shard one: no binding, nothing ready, its batches under shard tags no one read."""
    from distbatch.sweeper import Sweeper

    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, shards=4, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h", "key": "k"})
    b.emit_many("s", [{"k": i} for i in range(10)])
    Sweeper(b, lease_s=3)._own()  # a sweeper's heartbeat on the {ns} tag
    client.delete(Keys(namespace).meta)
    with pytest.raises(ConfigError) as err:
        Batcher(client, namespace=namespace, handoff=False)
    assert err.value.code == "layout_missing" and "--shards" in str(err.value)
    assert not client.exists(Keys(namespace).meta)  # nothing was written
    again = Batcher(client, namespace=namespace, shards=4, handoff=False)
    assert again.records.count("ready") == 10 and set(again.bindings()) == {"d@v1"}
    assert Batcher(client, namespace=namespace, handoff=False).layout.count == 4


@pytest.mark.parametrize("by", ["worker", "sweeper"])
def test_a_running_process_stores_its_layout_again_after_redis_lost_it(server: RedisServer, tmp_path: Path,
                                                                      by: str) -> None:
    """Redis restarted without persistence under a worker or a sweeper of a 4-shard namespace:
    their heartbeats came back, the layout did not, so every app and worker started after was
    refused (`layout_missing`) until someone passed the shards by hand. Now the next heartbeat
    stores it again, and a new app and a new worker start as before."""
    client = redis.Redis.from_url(server.url)
    ns = f"lost-{by}"
    with Procs(server.url, ns, tmp_path) as procs:
        first = getattr(procs, by)("--shards", "4")
        wait_for(lambda: client.zcard(getattr(Keys(ns), f"{by}s")), 30, f"the {by} up", procs.logs)
        server.stop(kill=True)
        server.start()  # empty
        wait_for(lambda: client.exists(Keys(ns).meta), 15, "the layout stored again", procs.logs)
        app = Batcher.from_url(server.url, namespace=ns)  # no shards= given: read from Redis
        assert app.layout.count == 4
        app.register("e", version="v1", source="s", handler="tests.handlers.record",
                     batch={"count": 2, "window": "200ms", "key": "k"})
        procs.worker()  # no --shards either
        if by == "worker":
            procs.sweeper()
        app.emit_many("s", [{"k": i % 5, "i": i} for i in range(25)])
        wait_for(lambda: sum(len(r["events"]) for r in delivered(client)) >= 25, 30, "25 events delivered",
                 procs.logs)
        assert first.poll() is None
