"""distbatch on a real local Redis Cluster (3 masters): real processes, a worker killed, sweepers
sharing shards, and a live slot migration under load."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from click.testing import CliRunner
from redis.backoff import NoBackoff

from distbatch import Batcher, transport
from distbatch.aio import AsyncBatcher
from distbatch.cli import main as cli
from distbatch.errors import EmitError
from distbatch.keys import Keys
from distbatch.sent import hides_retries
from distbatch.shards import batch_id_shard
from distbatch.sweeper import Sweeper

from .processes import Procs, delivered, wait_for
from .redis_server import LocalCluster, RedisServer, env_with_path

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def queue() -> Iterator[RedisServer]:
    """RQ's standalone Redis (and where test handlers record what they delivered)."""
    s = RedisServer().start()
    yield s
    s.cleanup()


def test_end_to_end_on_a_cluster_with_a_worker_killed(local_cluster: LocalCluster, queue: RedisServer,
                                                       tmp_path: Path) -> None:
    ns = "ce2e"
    env = {"DISTBATCH_QUEUE_URL": queue.url, "TEST_RECORD_URL": queue.url}
    procs = Procs(local_cluster.url, ns, tmp_path, env=env)
    record = redis.Redis.from_url(queue.url)
    try:
        b = Batcher.from_url(local_cluster.url, namespace=ns, queue_url=queue.url)
        assert b.layout.count == 3
        b.register("e2e", version="v1", source="s", handler="tests.handlers.record",
                   batch={"count": 10, "window": "200ms", "key": "k"})
        workers = [procs.worker("--lease", "2s") for _ in range(2)]
        procs.sweeper()
        procs.sweeper()
        producers = [procs.producer(p, 5_000, "dispatch", keys=100) for p in range(3)]
        wait_for(lambda: len(delivered(record)) > 200, 60, "deliveries", procs.logs)
        os.kill(workers[0].pid, signal.SIGKILL)
        procs.worker("--lease", "2s")
        for p in producers:
            assert p.wait(120) == 0, procs.logs()
        wait_for(lambda: len({e for r in delivered(record) for e in r["events"]}) >= 15_000, 120,
                 "every event delivered", procs.logs)
        rows = delivered(record)
        first_batch: dict[str, str] = {}
        for r in rows:  # a re-run of the same batch is fine; an event in two batches is not
            for e in r["events"]:
                assert first_batch.setdefault(e, r["id"]) == r["id"], f"event {e} in two batches"
        assert all(len(r["events"]) == 10 for r in rows if r["reason"] == "count")
        assert all(len(r["events"]) <= 10 for r in rows)
        counters = b.counters()
        assert counters["events_in:e2e@v1"] == 15_000
        wait_for(lambda: b.counters().get("events_delivered:e2e@v1") == 15_000, 60, "completions")
    finally:
        procs.stop_all()


def test_sweepers_share_the_shards_and_take_over_a_dead_ones(local_cluster: LocalCluster,
                                                            queue: RedisServer) -> None:
    def sweeper() -> Sweeper:
        return Sweeper(Batcher.from_url(local_cluster.url, namespace="share", queue_url=queue.url),
                       lease_s=0.6)

    a, b, c = sweeper(), sweeper(), sweeper()
    for _ in range(2):  # the second round settles: each sees three live sweepers
        for s in (a, b, c):
            s._own()
    owned = [set(s.owned) for s in (a, b, c)]
    assert sorted(x for o in owned for x in o) == [0, 1, 2] and all(len(o) == 1 for o in owned)
    died = time.monotonic()  # c dies without letting go: its lease (0.6 s) must run out first
    while set(a.owned) | set(b.owned) != {0, 1, 2}:
        assert time.monotonic() - died < 1.5, (a.owned, b.owned)
        a._own()  # the live ones renew every lease/3, as `run` does
        b._own()
        time.sleep(0.2)
    assert time.monotonic() - died >= 0.4  # not before its lease ran out


def test_cli_takes_a_cluster_url(local_cluster: LocalCluster, queue: RedisServer) -> None:
    b = Batcher.from_url(local_cluster.url, namespace="ccli", queue_url=queue.url)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h", "key": "k"})
    args = ["--redis-url", local_cluster.url, "--namespace", "ccli"]
    runner = CliRunner()
    out = runner.invoke(cli, ["emit", "s", *args], input="".join(f'{{"k": {i % 5}}}\n' for i in range(20)),
                        env={"DISTBATCH_QUEUE_URL": queue.url})
    assert out.exit_code == 0, out.output
    stats = runner.invoke(cli, ["stats", "--json", *args])
    assert '"shards": 3' in stats.output and '"events_in_total": 20' in stats.output


def test_a_cluster_batcher_without_a_queue_says_why(local_cluster: LocalCluster) -> None:
    from distbatch import ConfigError

    with pytest.raises(ConfigError) as err:
        Batcher(local_cluster.client(), namespace="noqueue")
    assert err.value.code == "cluster_needs_queue_url" and "--queue-url" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Batcher(local_cluster.client(), namespace="ccli", shards=5, handoff=False)
    assert err.value.code == "shards_mismatch"


def test_live_slot_migration_under_load(local_cluster: LocalCluster, queue: RedisServer) -> None:
    """Move a shard's slot to another master (MIGRATING/IMPORTING + MIGRATE) while producers emit
    and a consumer claims and completes: clients follow MOVED/ASK, no event is lost or doubled."""
    ns = "reshard"
    b = Batcher.from_url(local_cluster.url, namespace=ns, queue_url=queue.url)
    b.register("m", version="v1", source="s", handler="m.h",
               batch={"count": 5, "window": "300ms", "key": "k"})
    sweeper = Sweeper(Batcher.from_url(local_cluster.url, namespace=ns, queue_url=queue.url), lease_s=2)
    stop = threading.Event()
    acked: list[int] = []
    seen: Counter[int] = Counter()
    errors: list[BaseException] = []

    def produce(n: int) -> None:
        p = Batcher.from_url(local_cluster.url, namespace=ns, queue_url=queue.url)
        while not stop.is_set():
            chunk = [{"k": (n + i) % 40, "n": n + i} for i in range(20)]
            try:
                p.emit_many("s", chunk)
                acked.extend(e["n"] for e in chunk)
            except Exception as exc:  # an EmitError would say what was stored; count it as a failure
                errors.append(exc)
            n += 20
            time.sleep(0.002)

    def consume() -> None:
        c = Batcher.from_url(local_cluster.url, namespace=ns, handoff=False)
        while not stop.is_set() or c.records.count("ready"):
            claim = c.records.claim_next(10_000)
            if claim is None:
                time.sleep(0.005)
                continue
            for e in claim.batch.events:
                seen[e.payload["n"]] += 1
            assert c.records.complete(claim.batch.id, claim.token) is not None

    def sweep() -> None:
        while not stop.is_set():
            sweeper.run_once()
            time.sleep(0.02)

    threads = [threading.Thread(target=produce, args=(0,), daemon=True),
               threading.Thread(target=produce, args=(10**9,), daemon=True),
               threading.Thread(target=consume, daemon=True), threading.Thread(target=sweep, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    moved: list[int] = []
    tag = b.layout.tags[0]
    owner = local_cluster.client().get_node_from_key(tag).name
    with slots_moving(local_cluster, [tag], 0.0, chunk=20, pause_s=0.01, moved=moved):
        pass  # the load runs against a half-moved slot, 20 keys moved every 10 ms
    assert sum(moved) > 0
    time.sleep(1.0)
    stop.set()
    threads[0].join(10)
    threads[1].join(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # let every open window run out and be cut and consumed
        sweeper.run_once()
        if b.open_buffers() == 0 and b.records.count("ready") == 0 and b.records.count("running") == 0:
            break
        time.sleep(0.05)
    threads[2].join(10)
    assert not errors, errors[:3]
    assert local_cluster.client().get_node_from_key(tag).name != owner  # the shard moved
    assert len(acked) > 500
    assert sorted(seen) == sorted(acked) and max(seen.values()) == 1


def test_a_sweeper_backs_up_shards_whose_owner_is_late(local_cluster: LocalCluster,
                                                       queue: RedisServer) -> None:
    """The owner of every shard is frozen (holds the leases, sweeps nothing): another sweeper cuts
    its overdue windows once they are `backup_ms` late, before the leases run out."""
    ns = "backup"
    owner = Sweeper(Batcher.from_url(local_cluster.url, namespace=ns, queue_url=queue.url), lease_s=30)
    owner._own()
    assert sorted(owner.owned) == [0, 1, 2]
    b = Batcher.from_url(local_cluster.url, namespace=ns, queue_url=queue.url)
    b.register("w", version="v1", source="s", handler="m.h",
               batch={"count": 99, "window": "200ms", "key": "k"})
    b.emit_many("s", [{"k": i} for i in range(30)])
    backup = Sweeper(Batcher.from_url(local_cluster.url, namespace=ns, queue_url=queue.url), backup_ms=50)
    backup._own()
    assert backup.owned == []  # every shard is held by the frozen owner
    deadline = time.monotonic() + 5
    while b.open_buffers() and time.monotonic() < deadline:
        time.sleep(max(0.0, backup.run_once()))
    assert b.open_buffers() == 0 and backup.cut == 30


@dataclass
class Move:
    done: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)


@contextlib.contextmanager
def slots_moving(local_cluster: LocalCluster, tags: list[str], hold_s: float, *, chunk: int = 100,
                 pause_s: float = 0.0, moved: list[int] | None = None) -> Iterator[Move]:
    """Put the slot of each tag on the move (IMPORTING on another master, MIGRATING on its own)
    now; after `hold_s`, in a thread, MIGRATE its keys (`chunk` at a time, `pause_s` between)
    and give the slot to the new master. Leaving the block waits for the move to end; a move
    that failed is undone (the slots made STABLE where they were) and its error raised."""
    cluster = local_cluster.client()  # a fresh slot map: earlier moves changed the owners
    moves = []
    for tag in tags:
        slot = cluster.keyslot(tag)
        source = cluster.get_node_from_key(tag)
        target = next(n for n in cluster.get_primaries() if n.name != source.name)
        src, dst = redis.Redis(port=source.port), redis.Redis(port=target.port)
        src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        moves.append((slot, src, dst, target.port, dst_id))
    move = Move()

    def finish() -> None:
        time.sleep(hold_s)
        try:
            for slot, src, dst, port, dst_id in moves:
                while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, chunk):
                    src.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
                    if moved is not None:
                        moved.append(len(keys))
                    time.sleep(pause_s)
                dst.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
                for node in cluster.get_primaries():
                    redis.Redis(port=node.port).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        except BaseException as exc:
            move.errors.append(exc)
            for slot, src, dst, _, _ in moves:
                for node in (src, dst):
                    with contextlib.suppress(redis.RedisError):
                        node.execute_command("CLUSTER SETSLOT", slot, "STABLE")
        finally:
            move.done.set()

    mover = threading.Thread(target=finish, daemon=True)
    mover.start()
    try:
        yield move
    finally:
        assert move.done.wait(60), "the slot move did not end"
        if move.errors:
            raise move.errors[0]


def test_calls_wait_out_a_slot_on_the_move(local_cluster: LocalCluster) -> None:
    """While a slot moves, Redis runs a multi-key call only where all of its keys are (ASK, then
    TRYAGAIN), and every script names keys that are often absent (a new emitter's call key, the
    dead set), so each is refused until the move ends; redis-py gives up after 16 redirects
    (~0.4 s). Emit, claim, complete, a sweeper step and the async emit each wait the move out
    and run once."""
    ns = "slotwait"
    url = local_cluster.url
    b = Batcher.from_url(url, namespace=ns, handoff=False)
    b.register("w", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h", "key": "k"})
    b.emit_many("s", [{"k": i, "n": 0} for i in range(6)])  # one event in each of six buffers
    tags = list(b.layout.tags)

    with slots_moving(local_cluster, tags, 1.0):
        started = time.monotonic()
        results = Batcher.from_url(url, namespace=ns, handoff=False).emit_many(
            "s", [{"k": i, "n": 1} for i in range(6)])
        waited = time.monotonic() - started
    assert waited > 0.5, "the emit never met a slot on the move"
    assert len({r.batch.id for r in results if r.batch}) == 6

    with slots_moving(local_cluster, tags, 1.0):
        started = time.monotonic()
        claims = [b.records.claim_next(10_000) for _ in range(6)]
        waited = time.monotonic() - started
        done = [b.records.complete(c.batch.id, c.token) for c in claims if c is not None]
    assert waited > 0.5 and done == [2] * 6
    ns_of = sorted(e.payload["n"] for c in claims if c is not None for e in c.batch.events)
    assert ns_of == [0] * 6 + [1] * 6

    b.emit_many("s", [{"k": i, "n": 2} for i in range(3)])
    sweeper = Sweeper(Batcher.from_url(url, namespace=ns, handoff=False), lease_s=5)
    with slots_moving(local_cluster, tags, 1.0):
        started = time.monotonic()
        sweeper.run_once()
        assert time.monotonic() - started > 0.5

    async def emit_async() -> list[object]:
        async with await AsyncBatcher.from_url(url, namespace=ns, handoff=False) as ab:
            return list(await ab.emit_many("s", [{"k": i, "n": 3} for i in range(3)]))

    with slots_moving(local_cluster, tags, 1.0):
        started = time.monotonic()
        cut = asyncio.run(emit_async())
        assert time.monotonic() - started > 0.5
    assert len(cut) == 3 and b.open_buffers() == 0 and b.records.count("ready") == 3


def exact_cluster(local_cluster: LocalCluster, aio: bool) -> Any:
    """A cluster client that never sends a call again by itself (no retry policy)."""
    cls: Any = redis.asyncio.RedisCluster if aio else redis.RedisCluster
    retry = (redis.asyncio.retry.Retry if aio else redis.retry.Retry)(NoBackoff(), 0)
    params = inspect.signature(cls.__init__).parameters  # redis-py 5 counts its retries apart
    legacy = int(redis.__version__.split(".")[0]) < 6
    none = {k: 0 for k in ("cluster_error_retry_attempts", "connection_error_retry_attempts")
            if legacy and k in params}
    client = cls(host="127.0.0.1", port=local_cluster.nodes[0].port, retry=retry, **none)
    assert not hides_retries(client)
    return client


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("retries", [True, False], ids=["redis-py-retries", "no-retries"])
def test_a_slot_on_the_move_for_too_long_fails_the_emit_and_says_what_ran(
        local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, aio: bool, retries: bool) -> None:
    """Past the wait (`SLOT_MOVE_WAIT_S`, one wait for the whole call) the emit fails before the
    move ends. Each refusal ran nothing: with a client that sends nothing again by itself the
    events are 'not sent'; where redis-py may have resent a call after a connection error before
    the refusals, 'uncertain'. Emitting them again once the slot has moved stores each once."""
    monkeypatch.setattr(transport, "SLOT_MOVE_WAIT_S", 0.3)
    ns = f"slotlong{int(aio)}{int(retries)}"
    url = local_cluster.url
    b = Batcher.from_url(url, namespace=ns, handoff=False)
    b.register("w", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h", "key": "k"})
    b.emit_many("s", [{"k": i, "n": 0} for i in range(6)])
    payloads = [{"k": i, "n": 1} for i in range(6)]

    async def emit_async(events: list[dict[str, int]]) -> None:
        if retries:
            ab = await AsyncBatcher.from_url(url, namespace=ns, handoff=False)
        else:
            ab = AsyncBatcher(exact_cluster(local_cluster, aio=True), namespace=ns, handoff=False)
        async with ab:
            await ab.emit_many("s", events)

    def emit(events: list[dict[str, int]]) -> None:
        if aio:
            asyncio.run(emit_async(events))
        else:
            b = Batcher.from_url(url, namespace=ns, handoff=False) if retries else \
                Batcher(exact_cluster(local_cluster, aio=False), namespace=ns, handoff=False)
            b.emit_many("s", events)

    with slots_moving(local_cluster, list(b.layout.tags), 4.0) as move:
        with pytest.raises(EmitError) as failed:
            emit(payloads)
        assert not move.done.is_set(), "the emit waited for the whole move"
    err = failed.value
    assert err.stored == [] and "still on the move" in str(err)
    assert (err.uncertain, err.not_sent) == ((list(range(6)), []) if retries else ([], list(range(6))))
    assert b.records.count("ready") == 0
    emit([payloads[i] for i in (*err.uncertain, *err.not_sent)])
    claims = [b.records.claim_next(10_000) for _ in range(6)]
    ns_of = sorted(e.payload["n"] for c in claims if c is not None for e in c.batch.events)
    assert ns_of == [0] * 6 + [1] * 6


def test_a_namespace_is_first_used_while_its_slot_moves(local_cluster: LocalCluster) -> None:
    """A namespace's first use reads its layout (`EXISTS bindings regver`: two keys, both absent)
    where its meta key lives; while that slot moves Redis answers TRYAGAIN until the move ends.
    The Batcher waits it out and starts, with a shard per master."""
    ns = "slotnew"
    with slots_moving(local_cluster, [Keys(ns).meta], 1.0):
        started = time.monotonic()
        b = Batcher.from_url(local_cluster.url, namespace=ns, handoff=False)
        waited = time.monotonic() - started
    assert waited > 0.5 and b.layout.count == 3

    async def first_use() -> int:
        async with await AsyncBatcher.from_url(local_cluster.url, namespace="aslotnew", handoff=False) as ab:
            return (await ab.start()).layout.count  # read on connecting

    with slots_moving(local_cluster, [Keys("aslotnew").meta], 1.0):
        started = time.monotonic()
        assert asyncio.run(first_use()) == 3
        assert time.monotonic() - started > 0.5


def test_a_renewal_held_up_by_a_slot_on_the_move_holds_up_no_other(local_cluster: LocalCluster) -> None:
    """The lease keeper renews every batch in hand each lease/3; on a cluster one call per batch.
    A batch whose slot is on the move waits at most lease/3 and is not known either way (None: not
    lost, nor renewed); the batches of the other shards are renewed in the same pass, not after the move."""
    ns = "slotrenew"
    b = Batcher.from_url(local_cluster.url, namespace=ns, handoff=False)
    b.register("w", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h", "key": "k"})
    b.emit_many("s", [{"k": i} for i in range(12)])  # a batch each, over the three shards
    claims = [c for c in (b.records.claim_next(60_000) for _ in range(12)) if c is not None]
    by_shard = {batch_id_shard(c.batch.id): c for c in claims}
    assert sorted(by_shard) == [0, 1, 2]
    held = [(by_shard[s].batch.id, by_shard[s].token) for s in (0, 1, 2)]  # the moving one first
    with slots_moving(local_cluster, [b.layout.tags[0]], 3.0):
        started = time.monotonic()
        renewed = b.records.renew_many(held, 3_000)  # claimed for 60 s: renewed, 3 s from now
        took = time.monotonic() - started
        now = b.server_ms()
        deadlines = [b.client.zscore(b.shards[s].running, by_shard[s].batch.id) for s in (1, 2)]
    assert renewed == [None, True, True] and took < 2.0  # the moving shard's: lease/3 (1 s), not 3 s
    assert all(d is not None and d < now + 10_000 for d in deadlines)  # renewed in the same pass


def test_a_complete_that_fails_on_a_cluster_holds_up_no_other(local_cluster: LocalCluster) -> None:
    """On a cluster a round's completes go one per batch (their shards live on different nodes).
    One that fails (its node away) holds up none of the others: they are completed, and the
    failure is raised after them, so only its own batch waits for its lease to run out."""
    b = Batcher.from_url(local_cluster.url, namespace="clcomplete", handoff=False)
    b.register("w", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h", "key": "k"})
    b.emit_many("s", [{"k": i} for i in range(12)])  # a batch each, over the three shards
    claims = [c for c in (b.records.claim_next(60_000) for _ in range(12)) if c is not None]
    by_shard = {batch_id_shard(c.batch.id): c for c in claims}
    done = [(by_shard[s].batch.id, by_shard[s].token) for s in (0, 1, 2)]
    real = b.records.complete

    def node_away(batch_id: str, token: str) -> int | None:
        if batch_id == done[0][0]:
            raise redis.ConnectionError("the node of shard 0 is away")
        return real(batch_id, token)

    b.records.complete = node_away  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        b.records.complete_and_claim(done, 60_000, 0)
    running = [b.client.zscore(b.shards[s].running, done[s][0]) for s in (0, 1, 2)]
    assert running[0] is not None and running[1:] == [None, None]
    assert real(*done[0]) == 1  # the node back: its complete goes through


def test_a_claim_passes_over_a_shard_whose_node_is_away(local_cluster: LocalCluster) -> None:
    """A worker looks for ready batches shard by shard. On a cluster one shard's node away (its
    claim fails) holds up none of the others: their batches are claimed; only when every shard
    fails does the claim fail."""
    b = Batcher.from_url(local_cluster.url, namespace="claimaway", handoff=False)
    b.register("w", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h", "key": "k"})
    b.emit_many("s", [{"k": i} for i in range(12)])  # a batch each, over the three shards
    ready = {s: set(map(bytes.decode, b.client.zrange(b.shards[s].ready, 0, -1))) for s in (0, 1, 2)}
    assert all(ready.values())
    real, away = b.records._claim, {0}

    def node_away(k: Keys, batch_ids: Any, lease_ms: int, token: Any, n: int, **kw: Any) -> Any:
        if k.ready == b.shards[0].ready and 0 in away:
            raise redis.ConnectionError("the node of shard 0 is away")
        return real(k, batch_ids, lease_ms, token, n, **kw)

    b.records._claim = node_away  # type: ignore[method-assign]
    got = {c.batch.id for _ in range(6) for c in b.records.claim_some(60_000, 16)}
    assert got == ready[1] | ready[2]
    away.clear()
    assert b.records.claim_some(60_000, 16) == []  # passed over for AWAY_S after it failed
    b.records._away.clear()  # AWAY_S later
    assert {c.batch.id for c in b.records.claim_some(60_000, 16)} == ready[0]  # back: claimed

    def all_away(k: Keys, batch_ids: Any, lease_ms: int, token: Any, n: int, **kw: Any) -> Any:
        raise redis.ConnectionError("every node is away")

    b.records._claim = all_away  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        b.records.claim_some(60_000, 1)


def test_a_cluster_no_node_of_which_answers_is_an_outage_not_a_raw_error(queue: RedisServer,
                                                                        tmp_path: Path) -> None:
    """With every node away (a network cut, a whole-cluster restart) emit, emit_many and the
    asyncio calls raised redis-py's raw RedisClusterException, no `EmitError` (it is not even a
    `ConnectionError`); and a worker or sweeper started on it (or on a URL naming a node a
    failover left behind) exited at once, where a Redis away costs a line per retry."""
    own = LocalCluster(3).start()
    try:
        b = Batcher.from_url(own.url, namespace="away", queue_url=queue.url)
        b.register("c", version="v1", source="s", handler="tests.handlers.record",
                   batch={"count": 10, "window": "10s", "key": "k"})
        b.emit("s", {"k": "a"})
        b.emit_many("s", [{"k": f"k{i}"} for i in range(30)])
        loop = asyncio.new_event_loop()
        ab = loop.run_until_complete(AsyncBatcher.from_url(own.url, namespace="away", queue_url=queue.url))
        loop.run_until_complete(ab.emit("s", {"k": "a"}))
        for node in own.nodes:
            node.stop(kill=True)
        for call in (lambda: b.emit("s", {"k": "a"}),
                     lambda: b.emit_many("s", [{"k": f"k{i}"} for i in range(30)]),
                     lambda: loop.run_until_complete(ab.emit("s", {"k": "a"})),
                     lambda: loop.run_until_complete(ab.emit_many("s", [{"k": f"k{i}"} for i in range(30)]))):
            with pytest.raises(EmitError) as info:
                call()
            assert not info.value.stored, info.value
        loop.close()
        worker = subprocess.Popen(
            [sys.executable, "-m", "distbatch.cli", "worker", "--redis-url", own.url, "--namespace", "away",
             "--queue-url", queue.url], env=env_with_path(), stdout=(tmp_path / "w.log").open("wb"),
            stderr=subprocess.STDOUT)
        try:
            time.sleep(3)
            assert worker.poll() is None, (tmp_path / "w.log").read_text()
            assert "redis_unavailable" in (tmp_path / "w.log").read_text()
        finally:
            worker.terminate()
            worker.wait(15)
    finally:
        own.cleanup()


def test_a_burst_of_async_emits_stays_within_a_small_node_pool(local_cluster: LocalCluster) -> None:
    """`max_connections=4` on a cluster: each node's pool raises once full, and the batcher let
    64 calls in flight at once: most of a burst of 400 emit_many calls failed (a bare
    MaxConnectionsError, or an EmitError calling every event uncertain though none was sent)."""
    async def main() -> tuple[int, int]:
        async with await AsyncBatcher.from_url(local_cluster.url, namespace="poolburst", handoff=False,
                                               max_connections=4) as ab:
            for s in range(8):
                await ab.register(f"b{s}", version="v1", source=f"s{s}", handler="m.h",
                                  batch={"count": 1000, "window": "1h", "key": "k"})
            calls = [ab.emit_many(f"s{i % 8}", [{"k": i * 31 + j} for j in range(1 + i % 30)])
                     for i in range(400)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            assert not failed, failed[:3]
            return sum(1 + i % 30 for i in range(400)), sum((await ab.counters()).values())

    sent, counted = asyncio.run(main())
    assert counted == sent


def test_a_cluster_url_may_name_several_nodes_and_starts_from_any_that_answers(
        local_cluster: LocalCluster, queue: RedisServer) -> None:
    """A URL names one node: a worker, sweeper or app (re)started while that node was down waited
    for it for ever, the cluster healthy. `redis+cluster://a:1,b:2/` starts from any of them,
    sync and async; a node that is no host:port is refused by name."""
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on: a node that is down
        s.bind(("127.0.0.1", 0))
        down = s.getsockname()[1]
    live = local_cluster.nodes[1].port
    url = f"redis+cluster://127.0.0.1:{down},127.0.0.1:{live}/0"
    b = Batcher.from_url(url, namespace="several", queue_url=queue.url)
    b.register("c", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h", "key": "k"})
    assert [r.batch for r in b.emit_many("s", [{"k": "a"}, {"k": "a"}])][1] is not None

    async def asynchronous() -> int:
        a = await AsyncBatcher.from_url(url, namespace="several", queue_url=queue.url)
        try:
            return len(await a.emit("s", {"k": "b"}))
        finally:
            await a.aclose()

    assert asyncio.run(asynchronous()) == 1
    from distbatch.clients import check_url

    check_url(url)  # serve's settings check, which connects to nothing
    result = CliRunner().invoke(cli, ["stats", "--json", "--redis-url", url, "--namespace", "several"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(cli, ["stats", "--redis-url", f"redis+cluster://127.0.0.1:{live},nohost/0"])
    assert bad.exit_code == 1 and "'nohost' is no host:port of a cluster node" in bad.output, bad.output


RAN: list[str] = []


def ran_here(batch: Any) -> None:
    RAN.append(batch.id)


def test_a_cluster_claim_whose_reply_was_lost_runs_its_batch_not_sends_it_dead(
        local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim ran on its node and the reply was lost: its batch is this worker's, leased. A
    cluster worker that then passed over the shard without sending the claim again (to keep a
    hung node from holding up the others) left the batch to wait out its lease: reclaimed, its
    try counted, dead with `attempts: 1` without running (found by the second review)."""
    from distbatch import records as records_mod
    from distbatch.executor import Executor
    from distbatch.handlers import HandlerResolver

    b = Batcher.from_url(local_cluster.url, namespace="lostclaim", handoff=False)
    b.register("w", version="v1", source="s", handler=ran_here, batch={"count": 1, "window": "1h"},
               retry={"attempts": 1})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None
    bid, lease_ms = r.batch.id, 1500
    lost: list[Any] = []

    def reply_lost(real: Any) -> Any:
        def send(script: Any, keys: Any, args: Any, *rest: Any, **kw: Any) -> Any:
            reply = real(script, keys, args, *rest, **kw)
            if script is b.records.scripts.claim and not lost and len(reply) > 1:
                lost.append(reply)  # it ran on the node; its reply never came back
                raise redis.TimeoutError("Timeout reading from socket")
            return reply
        return send

    for name in ("once", "once_more"):
        monkeypatch.setattr(records_mod, name, reply_lost(getattr(records_mod, name)))
    executor = Executor(b.records, HandlerResolver(), lease_ms)
    executor.drain(max_batches=10, max_seconds=0.5, linger_s=0.0)
    assert lost
    deadline = time.monotonic() + lease_ms / 1000 + 0.3
    while time.monotonic() < deadline and bid not in RAN:
        executor.drain(max_batches=10, max_seconds=0.2, linger_s=0.0)
        time.sleep(0.05)
    time.sleep(0.2)
    Sweeper(b).run_once()  # a lease that ran out is reclaimed
    dead = [x.decode() for x in b.client.zrange(b.records.keys_for(bid).dead, 0, -1)]
    assert bid in RAN and bid not in dead, (bid in RAN, dead, b.records.raw(bid).get("error"))


def test_a_cluster_worker_claims_again_at_once_after_a_blip_on_every_shard(
        local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shard's claim failed once (the worker's own network): every shard was marked away,
    and for `AWAY_S` each claim raised that stale error without sending anything, the cluster
    answering again. With no other shard to take from, the shards are looked at again."""
    b = Batcher.from_url(local_cluster.url, namespace="blip", handoff=False)
    b.register("w", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h", "key": "k"})
    real, blip = b.records._claim, [True]

    def network_blip(*a: Any, **kw: Any) -> Any:
        if blip[0]:
            raise redis.ConnectionError("Error 104 while writing to socket. Connection reset by peer.")
        return real(*a, **kw)

    monkeypatch.setattr(b.records, "_claim", network_blip)
    with pytest.raises(redis.ConnectionError):
        b.records.claim_some(60_000, 16)  # every shard failed: raised
    blip[0] = False
    b.emit_many("s", [{"k": i} for i in range(6)])
    assert b.records.claim_some(60_000, 16)
