"""What the Redis server's own life does to distbatch (found by a review of maxmemory, restarts
and a Redis replaced by an empty one; each test failed before its fix): a Redis past
`maxmemory`, an evicting policy, an unbound source's recheck with Redis away, a registry lost
under a running producer. Own redis-server processes on loopback ports."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner

from distbatch import Batcher, EmitError, ManualClock
from distbatch.aio import AsyncBatcher
from distbatch.cli import main as cli
from distbatch.records import Outcome
from distbatch.scripts import source
from distbatch.testing import RedisServer, env_with_path


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of this test's own: its memory settings change."""
    server = RedisServer().start()
    yield server
    server.cleanup()


def test_look_only_commands_answer_on_a_redis_past_maxmemory(own_server: RedisServer, namespace: str) -> None:
    """Past `maxmemory` (the README's `noeviction`) Redis queues nothing inside MULTI, though it
    answers the same reads alone: `stats`, `triggers list` and `dead list` failed with
    `OutOfMemoryError ... GET regver of pipeline` (the registry was read in a transaction),
    exactly when an operator looks. Read in order instead, as for a look-only ACL user."""
    client = redis.Redis.from_url(own_server.url)
    Batcher(client, namespace=namespace).register("d", version="v1", source="s", handler="m.h",
                                                   batch={"count": 3, "window": "1h"})
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")  # far below what the server holds: every write refused
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("x", "y")
    args = ["--redis-url", own_server.url, "--namespace", namespace]
    for command in (["stats", "--json"], ["triggers", "list"], ["dead", "list"]):
        result = CliRunner().invoke(cli, [*command, *args])
        assert result.exit_code == 0 and "OutOfMemory" not in result.output, (command, result.output)
    assert "d@v1" in json.loads(CliRunner().invoke(cli, ["stats", "--json", *args]).output)["bindings"]
    assert list(Batcher(client, namespace=namespace).bindings()) == ["d@v1"]

    async def async_bindings() -> list[str]:
        b = AsyncBatcher(redis.asyncio.Redis.from_url(own_server.url), namespace=namespace)
        try:
            return list(await b.bindings())
        finally:
            await b.aclose()

    assert asyncio.run(async_bindings()) == ["d@v1"]


def test_an_emit_to_an_unbound_source_with_redis_away_is_an_emit_error(namespace: str) -> None:
    """A source with no binding in the cached copy is looked up again (one GET): with Redis away
    that GET raised a bare `redis.ConnectionError` out of `emit` / `emit_many`, where the README
    promises `EmitError` (a caller that re-sends `not_sent` crashed instead). Both APIs."""
    from distbatch import EmitError

    server = RedisServer().start()
    try:
        b = Batcher.from_url(server.url, namespace=namespace, handoff=False)
        b.register("d", version="v1", source="s", handler="m.h", batch={"count": 3, "window": "1h"})
        assert len(b.emit("s", {"n": 1})) == 1  # the registry is cached

        async def bound_async() -> AsyncBatcher:
            a = AsyncBatcher(redis.asyncio.Redis.from_url(server.url), namespace=namespace, handoff=False)
            assert len(await a.emit("s", {"n": 2})) == 1
            return a

        loop = asyncio.new_event_loop()
        a = loop.run_until_complete(bound_async())
    finally:
        server.cleanup()
    try:
        for call, n in ((lambda: b.emit("typo", {"n": 1}), 1),
                        (lambda: b.emit_many("typo", [{"n": 1}, {"n": 2}, {"n": 3}]), 3),
                        (lambda: loop.run_until_complete(a.emit("typo", {"n": 1})), 1),
                        (lambda: loop.run_until_complete(a.emit_many("typo", [{"n": 1}] * 2)), 2)):
            with pytest.raises(EmitError) as info:
                call()
            assert info.value.not_sent == list(range(n)) and not info.value.stored, info.value
            assert isinstance(info.value.__cause__, redis.ConnectionError)
    finally:
        loop.run_until_complete(a.aclose())
        loop.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_a_redis_that_evicts_is_said_so_where_an_operator_looks(own_server: RedisServer, namespace: str,
                                                                tmp_path: Path, policy: str) -> None:
    """An evicting `maxmemory-policy` dropped buffers, records and the bindings themselves
    (allkeys-*: 9,405 of 15,001 acknowledged events gone in the review's run) or the keys that
    make a resent call run once (volatile-*), and no process said a word. Now a worker, a
    sweeper and `serve` log `redis_evicts` at start, look-only commands say so on stderr and
    /healthz is degraded by a policy that evicts data (allkeys-*); a Redis that evicts nothing
    (noeviction, or no maxmemory) is not named."""
    from .processes import Procs, wait_for
    from .test_serve import Server

    client = redis.Redis.from_url(own_server.url)
    Batcher(client, namespace=namespace).register("d", version="v1", source="s", handler="m.h",
                                                   batch={"count": 3, "window": "1h"})
    args = ["--redis-url", own_server.url, "--namespace", namespace]
    quiet = CliRunner().invoke(cli, ["triggers", "list", *args])
    assert quiet.exit_code == 0 and "maxmemory" not in quiet.output, quiet.output
    client.config_set("maxmemory-policy", policy)
    assert "maxmemory" not in CliRunner().invoke(cli, ["triggers", "list", *args]).output  # no limit set
    client.config_set("maxmemory", str(512 << 20))
    said = subprocess.run([sys.executable, "-m", "distbatch.cli", "stats", "--json", *args],
                          env=env_with_path(), capture_output=True, text=True, timeout=60)
    assert said.returncode == 0 and f"maxmemory-policy={policy}" in said.stderr, said
    lost = "buffers, batch records and bindings" if policy.startswith("allkeys") else "keys with a TTL"
    assert f"it would drop distbatch's {lost}" in said.stderr, said.stderr
    assert json.loads(said.stdout)["bindings"]  # stdout stays JSON
    with Procs(own_server.url, namespace, tmp_path) as procs:
        procs.sweeper()
        procs.worker()
        wait_for(lambda: procs.logs().count("redis_evicts") >= 2, 20, "both to say redis_evicts", procs.logs)
    server = Server(own_server.url, tmp_path, namespace)
    try:
        health = httpx.get(f"{server.url}/healthz", timeout=10).json()
        # degraded by a policy that evicts data; volatile-* (managed Redis' usual default) costs
        # a resent call its run-once, which is said at start, not made a failed probe (strict=1)
        said_in_health = any(f"maxmemory-policy={policy}" in w for w in health["warnings"])
        assert said_in_health == policy.startswith("allkeys"), health
        assert "redis_evicts" in server.log.read_text()
    finally:
        server.stop()


def test_stats_reads_dropped_bindings_in_a_bounded_number_of_round_trips(redis_server: RedisServer,
                                                                         namespace: str) -> None:
    """Every version ever dropped keeps its counters, so `stats`, the dashboard and each scrape of
    `/metrics` read it again: 2 HGETs, an SCARD and an SRANDMEMBER per dropped binding, one round
    trip each (2,000 dropped versions: a 1.4 s scrape in the growth review's run). Now one
    pipeline per step, whatever their number; the rows are the same."""
    from distbatch.stats import collect

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    for v in range(60):
        b.register("d", version=f"v{v}", source="s", handler="m.h", batch={"count": 100, "window": "1h"})
        b.emit("s", {"v": v})
        if v < 59:
            b.drop(f"d@v{v}")
    sent = 0
    real = redis.connection.Connection.send_packed_command

    def counted(self: redis.connection.Connection, *args: object, **kwargs: object) -> None:
        nonlocal sent
        sent += 1
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        data = collect(b)
    finally:
        redis.connection.Connection.send_packed_command = real  # type: ignore[method-assign]
    rows = data["bindings"]
    assert len(rows) == 60 and rows["d@v59"]["registered"] and not rows["d@v3"]["registered"]
    assert rows["d@v3"]["events_in_total"] == 1 and rows["d@v3"]["source"] == "s", rows["d@v3"]
    assert rows["d@v59"]["open_buffers_now"] == 1 and rows["d@v59"]["next_window_closes_in_ms"] > 0
    assert sent < 30, f"{sent} round trips for 59 dropped bindings"


def test_a_cluster_down_while_the_bindings_are_read_is_an_emit_error(namespace: str) -> None:
    """The bindings are read as one (`Atomic`), which redis-py drives itself: on a cluster its
    own ClusterDownError (a node down) is no ConnectionError, and escaped `emit` as a bare error
    where every other call's is an EmitError (the diff review)."""
    import fakeredis
    from redis.exceptions import ClusterDownError

    from distbatch import EmitError

    b = Batcher(fakeredis.FakeRedis(), namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 3, "window": "1h"})
    b.core.registry.invalidate()  # the next emit reads the bindings

    class Down:
        def __getattr__(self, name: str) -> object:
            def fail(*args: object, **kwargs: object) -> None:
                raise ClusterDownError("CLUSTERDOWN The cluster is down")
            return fail

    b.client.pipeline = lambda *a, **k: Down()  # type: ignore[method-assign]
    with pytest.raises(EmitError) as info:
        b.emit_many("s", [{"n": 1}, {"n": 2}])
    assert info.value.not_sent == [0, 1] and isinstance(info.value.__cause__, ClusterDownError)
    assert "the cluster is down" in str(info.value), info.value  # no script ran
    # the reads after a stale reply (another instance registered meanwhile), single and planned
    del b.client.pipeline
    assert len(b.emit("s", {"n": 0})) == 1
    other = Batcher(b.client, namespace=namespace, handoff=False)
    for v in ("v2", "v3"):
        other.register("d", version=v, source="s", handler="m.h", batch={"count": 3, "window": "1h"})
        b.client.pipeline = lambda *a, **k: Down()  # type: ignore[method-assign]
        with pytest.raises(EmitError) as info:
            b.emit("s", {"n": 1}) if v == "v2" else b.emit_many("s", [{"n": 1}, {"n": 2}])
        assert isinstance(info.value.__cause__, ClusterDownError) and not info.value.stored, info.value
        del b.client.pipeline
        b.core.registry.invalidate()
        assert b.emit("s", {"n": 2})  # and on once the cluster is back


def test_a_queue_redis_that_evicts_is_named_by_its_option(own_server: RedisServer, namespace: str,
                                                          tmp_path: Path) -> None:
    """The ticket queue may live on another Redis (`--queue-url`): an evicting one there drops RQ's
    tickets and jobs as silently; a worker names it by its option (the diff review)."""
    from .processes import Procs, wait_for

    queue = RedisServer().start()
    try:
        redis.Redis.from_url(queue.url).config_set("maxmemory-policy", "allkeys-lru")
        redis.Redis.from_url(queue.url).config_set("maxmemory", str(512 << 20))
        Batcher(redis.Redis.from_url(own_server.url), namespace=namespace).register(
            "d", version="v1", source="s", handler="m.h", batch={"count": 3, "window": "1h"})
        with Procs(own_server.url, namespace, tmp_path) as procs:
            procs.worker("--queue-url", queue.url)
            wait_for(lambda: "redis_evicts: --queue-url: " in procs.logs(), 20, "the queue's Redis named",
                     procs.logs)
        assert procs.logs().count("redis_evicts") == 1, procs.logs()  # the namespace's Redis evicts nothing
        from .test_serve import Server

        server = Server(own_server.url, tmp_path, namespace, "--queue-url", queue.url)
        server.stop()
        assert "redis_evicts: --queue-url: " in server.log.read_text(), server.log.read_text()
    finally:
        queue.cleanup()


def test_what_moves_or_frees_what_distbatch_holds_runs_past_maxmemory(own_server: RedisServer,
                                                                        namespace: str) -> None:
    """Past `maxmemory` with `noeviction` (the README's setting) Redis refuses a script's first
    write that may grow memory. Every script opened with one (a counter, a done marker, a lease's
    score), so once Redis was full no `dead purge` or `drop` could get memory back, no worker
    could complete, renew or fail a batch it held, and no sweeper could cut an expired window or
    reclaim a lease: `purge` raised OutOfMemoryError with all its dead batches still there (the
    books review). They open with a write Redis never refuses for memory now; emits are still
    refused, as they should be."""
    client = redis.Redis.from_url(own_server.url)
    clock = ManualClock(0)
    b = Batcher(client, namespace=namespace, handoff=False, clock=clock)
    b.register("m", version="v1", source="m", handler="m.h", batch={"count": 1, "window": "1h"},
               retry={"attempts": 1})
    b.register("w", version="v1", source="w", handler="m.h", batch={"count": 10, "window": "1s"})
    b.register("d", version="v1", source="d", handler="m.h", batch={"count": 10, "window": "1h"})
    pad = "x" * 20_000
    b.emit_many("m", [{"i": i, "pad": pad} for i in range(6)])  # six batches ready
    b.emit_many("w", [{"i": i, "pad": pad} for i in range(2)])  # a window that runs out
    b.emit_many("d", [{"i": i, "pad": pad} for i in range(3)])  # a binding to drop
    rec = b.records
    dead, held, failing = (rec.claim_next(10_000) for _ in range(3))
    expiring = rec.claim_next(1)  # its lease runs out at once
    assert dead and held and failing and expiring
    assert rec.fail(dead.batch.id, dead.token, "boom", None) is Outcome.DEAD
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 30_000)
    with pytest.raises(EmitError):
        b.emit("m", {"i": 99})  # new events are refused
    assert rec.renew(held.batch.id, held.token, 10_000)
    assert rec.complete(held.batch.id, held.token) == 1
    assert rec.fail(failing.batch.id, failing.token, "boom", None) is Outcome.DEAD
    assert rec.purge(dead.batch.id) and rec.replay(failing.batch.id)
    assert rec.reclaim(expiring.batch.id) is Outcome.DEAD  # its one try counted
    assert rec.claim_next(10_000) is not None
    clock.advance("2s")
    (flushed,) = b.flush_expired()
    assert len(flushed.events) == 2
    assert len(b.drop("d@v1")) == 3
    k = b.layout.keys[0]
    client.delete(k.lease)
    assert client.eval(source("shard_lease"), 1, k.lease, "sweeper-1", 5000, "hold") == 1


def test_a_counters_key_of_the_wrong_type_stops_no_claim_nor_renewal(redis_server: RedisServer,
                                                                       namespace: str) -> None:
    """Claim, renew, promote and replay touch no counter, but opened with `HDEL <stats> ''` (what
    lets them run past maxmemory): a counters key a hostile writer made a string failed every
    claim and renewal with WRONGTYPE, where before only the counters failed (the diff review).
    The opening write goes under pcall: it lifts the refusal all the same."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    b.emit_many("s", [{"i": 1}, {"i": 2}])
    held = b.records.claim_next(10_000)
    assert held is not None
    client.delete(b.keys.stats)
    client.set(b.keys.stats, "x")
    assert b.records.renew(held.batch.id, held.token, 10_000)
    assert b.records.claim_next(10_000) is not None
