"""Running batches in-process: claims, leases, retries, dead batches, allowlists, no pickle."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import threading
import time
import zlib
from typing import Any

import fakeredis
import pytest
import redis
from rq import SimpleWorker

from distbatch import Batch, Batcher, ManualClock
from distbatch.dispatch import make_queue
from distbatch.executor import Executor
from distbatch.handlers import HandlerResolver, handler

from .processes import wait_for
from .redis_server import RedisServer, free_port

seen: list[Batch] = []


@handler
def collect(batch: Batch) -> None:
    seen.append(batch)


started = threading.Event()


def slow(batch: Batch) -> None:
    started.set()
    time.sleep(1.2)
    seen.append(batch)


def always_raises(batch: Batch) -> None:
    raise RuntimeError(f"boom on attempt {batch.attempt}")


@pytest.fixture(autouse=True)
def _clear() -> None:
    seen.clear()


def run(batcher: Batcher, bid: str, resolver: HandlerResolver | None = None, lease_ms: int = 10_000):
    """Claim `bid` and run it as a worker would."""
    claim = batcher.records.claim([bid], lease_ms)
    assert claim is not None, f"batch {bid} is not ready"
    return Executor(batcher.records, resolver or HandlerResolver(), lease_ms).run(claim)


def test_executor_delivers_and_deletes_record(batcher: Batcher, client) -> None:
    batcher.register("d", version="v1", source="s", handler=collect, batch={"count": 2, "window": "1s"})
    (_, r) = batcher.emit_many("s", [{"n": 1}, {"n": 2}])
    out = run(batcher, r.batch.id)
    assert out.status == "delivered" and out.attempt == 1
    assert [e.payload["n"] for e in seen[0].events] == [1, 2] and seen[0].attempt == 1
    assert not client.hexists(batcher.records.keys_for(r.batch.id).rec_info, r.batch.id)
    assert batcher.records.claim([r.batch.id], 1000) is None
    assert batcher.counters().get("events_delivered:d@v1") == 2


def test_claim_is_exclusive_while_lease_lives(batcher: Batcher) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1s"})
    bid = batcher.emit("s", {})[0].batch.id
    assert batcher.records.claim([bid], 60_000) is not None
    assert batcher.records.claim([bid], 60_000) is None
    assert batcher.records.reclaim(bid) == "live"


def test_expired_lease_can_be_reclaimed(batcher: Batcher) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1s"})
    bid = batcher.emit("s", {})[0].batch.id
    assert batcher.records.claim([bid], -1) is not None  # lease already over: its worker is gone
    assert batcher.records.reclaim(bid) == "retry"
    c = batcher.records.claim([bid], 60_000)
    assert c is not None and c.batch.attempt == 2


def test_a_worker_killed_mid_round_spends_no_try_of_its_batches_they_run_alone_next(
        batcher: Batcher, client) -> None:
    """A worker claims several batches at once, runs them in turn and completes them together:
    killed mid-round, Redis cannot tell which one was running. The reclaim counted a try of the
    first of the claim: when a later one had killed the worker, the first (its handler had
    returned) went dead with `attempts: 1`, and the killer ran again uncounted. Now none is
    counted; each is suspect and is claimed alone, where a death is its own."""
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1s"},
                     retry={"attempts": 1})
    ids = [r.batch.id for i in range(4) for r in batcher.emit("s", {"n": i})]
    claims = batcher.records.claim_some(-1, 3)  # leases already over: its worker is gone
    assert [c.batch.id for c in claims] == ids[:3] and [c.batch.attempt for c in claims] == [1, 1, 1]
    assert len({c.token for c in claims}) == 3 and all("." in c.token for c in claims)
    assert [batcher.records.reclaim(bid) for bid in ids[:3]] == ["retry", "retry", "retry"]
    error = batcher.records.raw(ids[0])["error"]
    assert "claimed with other batches" in error and "runs alone next" in error
    alone = batcher.records.claim_some(-1, 3)  # a suspect is taken alone, under a plain token
    assert [(c.batch.id, c.batch.attempt) for c in alone] == [(ids[0], 1)] and "." not in alone[0].token
    assert batcher.records.reclaim(ids[0]) == "dead"  # alone, its worker's death is its own
    again = batcher.records.claim_some(60_000, 3)
    assert [(c.batch.id, c.batch.attempt) for c in again] == [(ids[1], 1)]
    assert batcher.records.complete(again[0].batch.id, again[0].token) == 1
    again = batcher.records.claim_some(60_000, 3)
    assert [(c.batch.id, c.batch.attempt) for c in again] == [(ids[2], 1)]
    assert batcher.records.complete(again[0].batch.id, again[0].token) == 1
    rest = batcher.records.claim_some(60_000, 3)  # no suspect left: claims of several again
    assert [(c.batch.id, c.batch.attempt) for c in rest] == [(ids[3], 1)]
    assert batcher.records.count("dead") == 1


def test_a_claim_of_several_stops_before_a_suspect_batch(batcher: Batcher, client) -> None:
    """A suspect met behind other ready batches (ids given, or older ones retried meanwhile)
    ends the claim before it, so it is first, and alone, in the next."""
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1s"})
    ids = [r.batch.id for i in range(5) for r in batcher.emit("s", {"n": i})]
    first = batcher.records.claim_some(60_000, 1)
    assert [c.batch.id for c in first] == ids[:1]
    two = batcher.records.claim_some(-1, 2)
    assert [c.batch.id for c in two] == ids[1:3]
    assert [batcher.records.reclaim(c.batch.id) for c in two] == ["retry", "retry"]
    took = batcher.records._claim(batcher.records.keys_for(ids[0]), [ids[3], ids[1], ids[4]],
                                  60_000, None, 3)
    assert [c.batch.id for c in took] == [ids[3]]  # ends before the suspect
    assert [c.batch.id for c in batcher.records.claim_some(60_000, 3)] == [ids[1]]
    assert [c.batch.id for c in batcher.records.claim_some(60_000, 3)] == [ids[2]]
    assert [c.batch.id for c in batcher.records.claim_some(60_000, 3)] == [ids[4]]


def test_retries_with_attempt_then_dead_then_replay(batcher: Batcher, client) -> None:
    batcher.register("d", version="v1", source="s", handler=f"{__name__}.always_raises",
                     batch={"count": 1, "window": "1s"}, retry={"attempts": 3, "backoff": "1ms"})
    bid = batcher.emit("s", {})[0].batch.id
    resolver = HandlerResolver([__name__])
    statuses = []
    for _ in range(3):
        time.sleep(0.01)
        batcher.records.promote(0)
        statuses.append(run(batcher, bid, resolver).status)
    assert statuses == ["retry", "retry", "dead"]
    assert client.zscore(batcher.records.keys_for(bid).dead, bid) is not None
    assert "boom on attempt 3" in batcher.records.raw(bid)["error"]
    assert batcher.records.claim([bid], 1000) is None
    assert batcher.records.replay(bid)
    assert run(batcher, bid, resolver).attempt == 1


def test_batches_no_worker_can_run_keep_the_log_bounded(batcher: Batcher,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A batch whose handler this worker may not run is given back and looked at again every 5 s,
    logging a `handler_unavailable` error each time: 200 such batches wrote 1,200 lines in 30 s
    (a review's run; a rolling deploy's missing module does it). Now at most 20 lines a minute
    per worker; every batch is still given back, uncounted."""
    batcher.register("d", version="v1", source="s", handler="shutil.rmtree",
                     batch={"count": 1, "window": "1s"})
    ids = [r.batch.id for r in batcher.emit_many("s", [{"n": i} for i in range(40)])]
    executor = Executor(batcher.records, HandlerResolver(["tests.handlers"]), 10_000)
    with caplog.at_level(logging.ERROR, logger="distbatch"):
        outs = [executor.run(batcher.records.claim([bid], 10_000)) for bid in ids]
    assert [o.status for o in outs] == ["unavailable"] * 40
    assert len([m for m in caplog.messages if "handler_unavailable" in m]) == 20


def test_backoff_grows_and_is_capped() -> None:
    from distbatch.config import RetryPolicy

    p = RetryPolicy.parse({"attempts": 5, "backoff": "1s", "backoff_factor": 3, "max_backoff": "5s"})
    assert [p.delay_ms(a) for a in (1, 2, 3)] == [1000, 3000, 5000]


def test_refused_handler_is_never_imported_and_batch_waits_uncounted(
        batcher: Batcher, client, caplog: pytest.LogCaptureFixture) -> None:
    batcher.register("d", version="v1", source="s", handler="shutil.rmtree",
                     batch={"count": 1, "window": "1s"})  # os.system is posix.system: refused at register
    bid = batcher.emit("s", {"path": "/tmp/pwned"})[0].batch.id
    out = run(batcher, bid, HandlerResolver(["tests.handlers", "shutilx"]))
    assert out.status == "unavailable"
    assert f"handler_unavailable batch={bid} binding=d@v1 " in caplog.text  # which binding, every 5 s
    error = batcher.records.raw(bid)["error"]
    assert "HandlerNotAllowed" in error and "shutil.rmtree" in error
    k = batcher.records.keys_for(bid)
    assert client.zscore(k.dead, bid) is None and client.zscore(k.delayed, bid)
    assert batcher.records.raw(bid)["attempt"] == 0  # the try was given back
    counters = batcher.counters()  # no handler ran, none failed: not a retry
    assert counters.get("batches_given_back", 0) == 1 and counters.get("batch_retries", 0) == 0
    from prometheus_client import generate_latest

    from distbatch.metrics import namespace_registry
    text = generate_latest(namespace_registry(batcher)).decode()
    assert "distbatch_batches_given_back_total 1.0" in text and "distbatch_batch_retries_total 0.0" in text


def test_allowlist_is_by_module_prefix_not_string_prefix() -> None:
    r = HandlerResolver(["tests.handlers"])
    assert r.allowed("tests.handlers.record")
    assert not r.allowed("tests.handlers_evil.record")
    assert not r.allowed("tests.handler")


def test_an_allowlisted_module_lends_none_of_what_it_merely_imported(tmp_path, monkeypatch) -> None:
    """The allowlist once covered any callable attribute of an allowed module: a path written to
    Redis reached `tests.handlers.Batch` (a class it imports), `tests.handlers.cache` (functools')
    or `tests.handlers.__class__`. Only what the module (or a module under the prefix) defines is
    a handler; a path that names no module, or a module that fails as it is imported, is refused
    with a clear word instead of an exception that took the worker's round down."""
    from distbatch.errors import HandlerNotAllowed

    r = HandlerResolver(["tests.handlers", "tests", "boom_at_import"])
    for path in ("tests.handlers.Batch", "tests.handlers.cache", "tests.handlers.__class__",
                 "tests.handlers.__init__", "tests.handlers.time", "tests", "boom_at_import.f"):
        with pytest.raises(HandlerNotAllowed) as err:
            r.resolve(path)
        assert repr(path) in str(err.value)
    (tmp_path / "boom_at_import.py").write_text("raise RuntimeError('broken at import')\ndef f(b): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HandlerNotAllowed, match="RuntimeError: broken at import"):
        r.resolve("boom_at_import.f")
    import tests.handlers as th

    assert r.resolve("tests.handlers.describe") is th.describe
    assert r.resolve("tests.handlers.client") is th.client  # decorated in the module: its own


def test_rq_job_is_json_not_pickle_and_runs_in_simple_worker(
    redis_server: RedisServer, namespace: str
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, clock=ManualClock(0))
    b.register("d", version="v1", source="s", handler=collect, batch={"count": 2, "window": "1s"})
    b.emit_many("s", [{"n": 1}, {"n": 2}])
    queue = make_queue(client, b.keys)
    (job_id,) = [j.decode() for j in client.lrange(queue.key, 0, -1)]
    data = client.hget(f"rq:job:{job_id}", "data")
    assert not data.startswith(b"\x80")  # pickle protocol 2+ header
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(zlib.decompress(data))
    func, _instance, args, _kwargs = json.loads(zlib.decompress(data))
    assert func == "distbatch.jobs.run_batches" and args == [namespace]
    from distbatch import jobs

    jobs.configure(Executor(b.records, HandlerResolver(), 5000, b.dispatcher))
    worker = SimpleWorker([queue], connection=client, serializer=queue.serializer)
    assert worker.work(burst=True, logging_level="ERROR")
    assert [e.payload["n"] for e in seen[0].events] == [1, 2]
    assert b.records.count("ready") == 0 and not client.exists(f"{b.keys.base}:batch:1")


def test_a_long_handler_keeps_its_lease(redis_server: RedisServer) -> None:
    """A handler running for several leases is never reclaimed; its lease keeps moving forward."""
    b = Batcher.from_url(redis_server.url, namespace="lease-keep", handoff=False)
    started.clear()
    b.register("slow", version="v1", source="s", handler=slow, batch={"count": 1, "window": "1h"})
    (r,) = b.emit("s", {"n": 1})
    claim = b.records.claim([r.batch.id], 300)
    executor = Executor(b.records, HandlerResolver(), lease_ms=300)
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(executor.run(claim).status))
    runner.start()
    assert started.wait(5)
    deadlines = []
    for _ in range(4):  # 1 s: more than three leases of 300 ms
        time.sleep(0.25)
        deadlines.append(b.client.zscore(b.records.keys_for(r.batch.id).running, r.batch.id))
        assert b.records.reclaim(r.batch.id) == "live"
    runner.join(5)
    assert outcome == ["delivered"] and len(seen) == 1
    assert deadlines == sorted(deadlines) and len(set(deadlines)) >= 3
    assert not b.client.zscore(b.records.keys_for(r.batch.id).running, r.batch.id)


@pytest.mark.parametrize("backend", ["redis", "fakeredis"])
def test_sweeper_asleep_is_woken_by_a_new_window(backend: str, redis_server: RedisServer) -> None:
    """A sweeper with nothing to do sleeps up to max_sleep; a new window must wake it, so the
    partial batch is cut at its deadline, not at the end of that sleep."""
    import fakeredis

    from distbatch.sweeper import Sweeper

    server = fakeredis.FakeServer()

    def connect() -> redis.Redis:
        if backend == "redis":
            return redis.Redis.from_url(redis_server.url)
        return fakeredis.FakeRedis(server=server)

    b = Batcher(connect(), namespace=f"wake-{backend}")
    b.register("w", version="v1", source="s", handler="m.h", batch={"count": 10, "window": "200ms"})
    sweeper = Sweeper(Batcher(connect(), namespace=f"wake-{backend}"), max_sleep_s=30)
    stop = threading.Event()
    thread = threading.Thread(target=sweeper.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # the sweeper found nothing due and went to sleep for max_sleep_s
        b.emit("s", {"n": 1})
        deadline = time.monotonic() + 5
        while sweeper.cut == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sweeper.cut == 1
    finally:
        stop.set()
        b.client.publish(b.keys.wake, "stop")  # end its wait now
        thread.join(5)


def test_a_worker_run_in_process_leaves_the_collector_as_it_found_it() -> None:
    """The worker freezes its start-up objects out of the garbage collector (a full collection
    mid-stream cost 14 ms); it unfreezes them on return, so cyclic garbage that was alive when
    it started is still collected in a process that runs workers in turn (tests, apps)."""
    import gc
    import weakref

    import fakeredis

    from distbatch.worker import run_worker

    class Node:
        me: object = None

    server = fakeredis.FakeServer()
    frozen_before = gc.get_freeze_count()
    for _ in range(2):
        node = Node()
        node.me = node  # a cycle, alive while the worker starts
        ref = weakref.ref(node)
        batcher = Batcher(fakeredis.FakeRedis(server=server), namespace="gcw")
        run_worker(batcher, burst=True, summary_every_s=0)
        del node
        gc.collect()
        assert ref() is None
    assert gc.get_freeze_count() == frozen_before


starts: list[float] = []


def note_start(batch: Batch) -> None:
    starts.append(time.monotonic())


@pytest.mark.parametrize("handoff", ["same-redis", "queue-elsewhere", "none"])
@pytest.mark.parametrize("backend", ["redis", "fakeredis"])
def test_a_lingering_worker_waits_on_the_bell_instead_of_polling(
    backend: str, handoff: str, redis_server: RedisServer, fake_server: fakeredis.FakeServer,
    namespace: str
) -> None:
    """Between batches a draining worker blocks on the bell that each emit which makes a batch
    ready rings: it claims a few times a second while idle (not every 2-10 ms), and a batch cut
    while it waits starts at once, not at its next look (at least every 100 ms) — wherever the
    emitter hands off to, or if it does not."""
    client = (redis.Redis.from_url(redis_server.url) if backend == "redis"
              else fakeredis.FakeRedis(server=fake_server))
    options: dict[str, Any] = {"same-redis": {}, "none": {"handoff": False},
                               "queue-elsewhere": {"queue_client": fakeredis.FakeRedis()}}[handoff]
    b = Batcher(client, namespace=namespace, **options)
    b.register("f", version="v1", source="s", handler=f"{__name__}.note_start",
               batch={"count": 1, "window": "1h"})
    starts.clear()
    b.emit("s", {"n": 0})
    claims = 0
    real_claim_some = b.records.claim_some

    def counted(lease_ms: int, n: int) -> Any:
        nonlocal claims
        claims += 1
        return real_claim_some(lease_ms, n)

    b.records.claim_some = counted  # type: ignore[method-assign]
    ex = Executor(b.records, HandlerResolver([__name__]))
    drain = threading.Thread(target=ex.drain, kwargs={"max_batches": 100, "max_seconds": 10, "linger_s": 1.5})
    drain.start()
    emitted: list[float] = []
    for i in range(1, 6):
        time.sleep(0.15)
        emitted.append(time.monotonic())
        b.emit("s", {"n": i})
    drain.join(10)
    assert len(starts) == 6
    waits = sorted(s - e for s, e in zip(starts[1:], emitted, strict=True))
    assert waits[2] < 0.04, waits  # median: rung, not found by a look every 100 ms
    assert claims < 40, claims  # ~2.2 s of lingering: a look per 100 ms, not every 2-10 ms


def test_a_flush_that_cuts_rings_the_bell_and_one_that_only_discards_does_not(
    client: redis.Redis, namespace: str
) -> None:
    clock = ManualClock(0)
    b = Batcher(client, namespace=namespace, clock=clock, handoff=False, shards=1)
    b.register("f", version="v1", source="s", handler="m.h", batch={"count": 10, "window": "1m"})
    b.register("g", version="v1", source="t", handler="m.h",
               batch={"count": 10, "window": "1m", "expire_action": "discard"})
    b.emit("t", {"n": 0})
    clock.advance("2m")
    assert [bt.discarded for bt in b.flush_expired()] == [True]
    assert client.llen(b.keys.bell) == 0
    b.emit("s", {"n": 1})
    clock.advance("2m")
    assert [bt.discarded for bt in b.flush_expired()] == [False]
    assert client.llen(b.keys.bell) == 1


@pytest.mark.parametrize("cut", [5, 12])
def test_a_call_that_makes_several_batches_ready_wakes_as_many_workers(
    client: redis.Redis, namespace: str, cut: int
) -> None:
    """One token per batch made ready (at most 8 kept): one emit_many that cuts several batches
    wakes that many lingering workers, not one."""
    b = Batcher(client, namespace=namespace, handoff=False, shards=1)
    b.register("f", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    b.emit_many("s", [{"n": i} for i in range(cut)])
    assert client.llen(b.keys.bell) == (0 if isinstance(client, redis.RedisCluster) else min(cut, 8))


def test_a_client_with_a_short_socket_timeout_polls_instead_of_blocking(
    redis_server: RedisServer, namespace: str
) -> None:
    """Redis answers a blocking wait up to ~200 ms late (its `hz`): a client whose socket times
    out sooner would fail the drain, so its worker polls; one with the default timeout waits on
    the bell."""
    short = Batcher(redis.Redis.from_url(redis_server.url, socket_timeout=0.1), namespace=namespace)
    assert not short.records.has_bell
    assert Batcher.from_url(redis_server.url, namespace=namespace).records.has_bell
    short.register("f", version="v1", source="s", handler=f"{__name__}.note_start",
                   batch={"count": 1, "window": "1h"})
    starts.clear()
    short.emit("s", {"n": 0})
    Executor(short.records, HandlerResolver([__name__])).drain(linger_s=0.5)
    assert len(starts) == 1


class _CountedConnection(redis.Connection):
    """Counts the round trips a client makes: each sends its commands in one write."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)


@pytest.mark.parametrize("shards", [1, 3])
def test_a_worker_fed_one_batch_at_a_time_pays_one_round_trip_of_its_own_per_batch(
    redis_server: RedisServer, namespace: str, shards: int
) -> None:
    """A lingering worker settles the batch in hand, waits on the bell and claims the next in one
    round trip: the paced regime (batches one at a time, the worker idle between them) is where a
    worker under 80% load spends its time, and every round trip there is CPU on a shared machine.
    The burst before it leaves tokens on the bell for batches already claimed; they must not
    cost a round trip each."""
    pool = redis.ConnectionPool.from_url(redis_server.url, connection_class=_CountedConnection)
    worker_side = Batcher(redis.Redis(connection_pool=pool), namespace=namespace, handoff=False,
                          shards=shards)
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False, shards=shards)
    b.register("f", version="v1", source="s", handler=f"{__name__}.note_start",
               batch={"count": 1, "window": "1h"})
    starts.clear()
    b.emit_many("s", [{"k": i} for i in range(12)])  # a burst first: 12 batches, 8 tokens
    ex = Executor(worker_side.records, HandlerResolver([__name__]), lease_ms=600_000)
    drain = threading.Thread(target=ex.drain, kwargs={"max_batches": 1000, "max_seconds": 30,
                                                      "linger_s": 0.5})
    drain.start()
    deadline = time.monotonic() + 10
    while len(starts) < 12 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.03)
    sent_before, paced = _CountedConnection.sent, 20
    for i in range(paced):
        b.emit("s", {"k": 100 + i})
        while len(starts) < 13 + i and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.02)  # the worker is idle on the bell when the next batch comes
    sent = _CountedConnection.sent - sent_before
    drain.join(10)
    assert len(starts) == 12 + paced
    assert sent <= paced + 3, f"{sent} round trips for {paced} batches"


def test_every_path_that_makes_a_batch_ready_rings_the_bell(client: redis.Redis, namespace: str) -> None:
    """A retry due now, a retry whose delay ran out, a reclaimed lease and a replayed dead batch
    ring the bell as an emit does: a lingering worker takes them at once, not at its next look."""
    b = Batcher(client, namespace=namespace, handoff=False, shards=1)
    b.register("f", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"},
               retry={"attempts": 10})
    rec, bell = b.records, b.keys.bell
    b.emit("s", {"n": 0})

    def claimed(lease_ms: int = 60_000) -> Any:
        c = rec.claim_next(lease_ms)  # the last one ready: the bell goes quiet
        assert c is not None and client.llen(bell) == 0
        return c

    c = claimed()
    assert rec.fail(c.batch.id, c.token, "boom", 0).value == "retry"  # due now
    assert client.llen(bell) == 1
    c = claimed()
    rec.fail(c.batch.id, c.token, "boom", 1)  # due in 1 ms: nothing ready yet
    assert client.llen(bell) == 0
    time.sleep(0.01)
    assert rec.promote(0)[0] == 1
    assert client.llen(bell) == 1
    c = claimed(lease_ms=1)
    time.sleep(0.01)
    assert rec.reclaim(c.batch.id).value == "retry"
    assert client.llen(bell) == 1
    c = claimed()
    assert rec.fail(c.batch.id, c.token, "boom", None).value == "dead"
    assert client.llen(bell) == 0
    assert rec.replay(c.batch.id)
    assert client.llen(bell) == 1


def test_a_claim_that_leaves_nothing_ready_silences_the_bell(client: redis.Redis, namespace: str) -> None:
    """Tokens left on the bell by batches claimed in a stream stand for nothing once no batch is
    ready: the claim that takes the last one (or finds none) deletes them, so a worker that waits
    next is woken by the next batch, not by stale tokens a round trip at a time."""
    b = Batcher(client, namespace=namespace, handoff=False, shards=1)
    b.register("f", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    b.emit_many("s", [{"n": i} for i in range(12)])
    rung = 0 if isinstance(client, redis.RedisCluster) else 8  # emits do not ring on a cluster
    assert client.llen(b.keys.bell) == rung
    lefts = [c.left for c in (b.records.claim_next(60_000) for _ in range(12)) if c is not None]
    assert lefts == list(range(11, -1, -1))
    assert client.llen(b.keys.bell) == 0
    client.lpush(b.keys.bell, 1, 1)  # stale: nothing is ready
    assert b.records.claim_next(60_000) is None
    assert client.llen(b.keys.bell) == 0


def test_a_claim_read_after_its_lease_surely_ran_out_is_not_run(client: redis.Redis, namespace: str) -> None:
    """A claim whose reply was read past `stale_after` (its worker paused while Redis ran it) is
    dropped as lease_lost without running the handler: the batch is reclaimed and run elsewhere."""
    import dataclasses

    b = Batcher(client, namespace=namespace, handoff=False, shards=1)
    b.register("f", version="v1", source="s", handler=f"{__name__}.note_start",
               batch={"count": 1, "window": "1h"})
    b.emit("s", {"n": 0})
    starts.clear()
    claim = b.records.claim_next(60_000)
    assert claim is not None and time.monotonic() <= claim.stale_after
    ex = Executor(b.records, HandlerResolver([__name__]))
    result = ex.run(dataclasses.replace(claim, stale_after=time.monotonic() - 1))
    assert result.status == "lease_lost" and starts == []
    assert b.records.count("running") == 1  # left for the sweeper to reclaim when the lease ends


@pytest.mark.parametrize("backend", ["redis", "fakeredis"])
def test_a_bell_that_is_not_a_list_fails_nothing_and_is_cleared(
    backend: str, redis_server: RedisServer, fake_server: fakeredis.FakeServer, namespace: str
) -> None:
    """The bell only wakes workers early: a hostile writer that makes it a string must not fail
    (nor half-write) an emit, a flush, a retry or a reclaim, and a lingering worker still runs
    every batch; the first claim that finds nothing ready deletes the bad key."""
    client = (redis.Redis.from_url(redis_server.url) if backend == "redis"
              else fakeredis.FakeRedis(server=fake_server))
    clock = ManualClock(0)
    b = Batcher(client, namespace=namespace, handoff=False, shards=1, clock=clock)
    b.register("f", version="v1", source="s", handler=f"{__name__}.note_start",
               batch={"count": 2, "window": "1m"}, retry={"attempts": 5})
    starts.clear()
    client.set(b.keys.bell, "not a list")
    (r,) = b.emit("s", {"n": 0})
    assert r.batch is None
    (r,) = b.emit("s", {"n": 1})  # cuts: rings the bell
    assert r.batch is not None and len(r.batch.events) == 2
    b.emit("s", {"n": 2})
    clock.advance("2m")
    assert [len(x.events) for x in b.flush_expired()] == [1]  # cuts: rings the bell
    c = b.records.claim_next(60_000)
    assert c is not None and b.records.fail(c.batch.id, c.token, "boom", 0).value == "retry"
    assert client.type(b.keys.bell) == b"string"  # nothing ready was claimed out yet
    Executor(b.records, HandlerResolver([__name__])).drain(linger_s=0.3)
    assert len(starts) == 2
    assert client.exists(b.keys.bell) == 0
    assert b.counters()["events_in:f@v1"] == 3 and b.counters()["events_delivered:f@v1"] == 3


@pytest.mark.parametrize("backend", ["redis", "fakeredis"])
@pytest.mark.parametrize("call", ["emit", "emit_many"])
def test_a_ticket_queue_that_is_not_a_list_fails_no_emit(
    backend: str, call: str, redis_server: RedisServer, fake_server: fakeredis.FakeServer, namespace: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    """An emit that cuts reads the ticket queue's length in its script; a queue key a hostile
    writer made a string must not fail the emit after its event was stored (the caller would
    emit it again): the emit returns its batch and the hand-off's failure is logged."""
    client = (redis.Redis.from_url(redis_server.url) if backend == "redis"
              else fakeredis.FakeRedis(server=fake_server))
    b = Batcher(client, namespace=namespace, shards=1)
    b.register("f", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1m"})
    queue = make_queue(client, b.keys)
    client.set(queue.key, "not a list")
    (r,) = b.emit("s", {"n": 0}) if call == "emit" else b.emit_many("s", [{"n": 0}])
    assert r.batch is not None
    assert b.counters()["events_in:f@v1"] == 1 and b.records.count("ready") == 1
    assert "handoff_failed" in caplog.text and "WRONGTYPE" in caplog.text  # says why


def test_a_shard_that_fails_holds_up_none_of_the_other_shards_sweeps(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On Redis Cluster a namespace's shards live on different nodes. A sweeper holding several
    sweeps each on its own: one whose node is away (here its flush raises, as a node gone
    does) is logged and tried again after a backoff, while the windows of the others are cut
    on time; once it answers again it is swept too."""
    import logging

    from distbatch.sweeper import Sweeper

    b = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, shards=3, handoff=False)
    b.register("w", version="v1", source="s", handler="m.h",
               batch={"count": 100, "window": "100ms", "key": "k"})
    b.emit_many("s", [{"k": i} for i in range(30)])  # open buffers on every shard
    sweeper = Sweeper(b, lease_s=30)
    real, tried = b.flush_step, []

    def node_away(limit: int, *, with_events: bool, shard: int = 0) -> Any:
        tried.append(shard)
        if shard == 0:
            raise redis.ConnectionError("the node of shard 0 is away")
        return real(limit, with_events=with_events, shard=shard)

    b.flush_step = node_away  # type: ignore[method-assign]
    time.sleep(0.15)  # every window has run out
    with caplog.at_level(logging.WARNING, "distbatch.sweeper"):
        wait = sweeper.run_once()
    assert sorted(sweeper.owned) == [0, 1, 2] and 0 < wait <= 0.1
    open_on = [b.client.zcard(b.shards[s].deadlines) for s in range(3)]
    assert open_on[0] > 0 and open_on[1:] == [0, 0]  # shards 1 and 2 were cut
    assert "sweeper_shard_failed shard=0" in caplog.text
    tried.clear()
    sweeper.run_once()
    assert 0 not in tried  # within its backoff: not tried again
    b.flush_step = real  # type: ignore[method-assign]
    time.sleep(0.11)
    sweeper.run_once()
    assert b.client.zcard(b.shards[0].deadlines) == 0


def test_a_sweeper_whose_every_shard_fails_says_so(redis_server: RedisServer, namespace: str) -> None:
    """All of its shards away (Redis down): the pass raises, and `run` logs it and backs off."""
    from distbatch.sweeper import Sweeper

    b = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, shards=2, handoff=False)
    sweeper = Sweeper(b, lease_s=30)
    sweeper._own()

    def away(limit: int, *, with_events: bool, shard: int = 0) -> Any:
        raise redis.ConnectionError(f"the node of shard {shard} is away")

    b.flush_step = away  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        sweeper.run_once()


def test_a_drain_runs_its_batches_when_the_ready_count_fails(redis_server: RedisServer,
                                                             namespace: str) -> None:
    """A drain starts by counting the ready batches to enqueue tickets for idle workers. On a
    cluster that count reads every shard; one node away must not stop the drain from running
    the batches it can reach."""
    b = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace)  # a dispatcher: fans out
    b.register("f", version="v1", source="s", handler=f"{__name__}.collect",
               batch={"count": 1, "window": "1h"})
    for i in range(3):
        b.emit("s", {"n": i})

    def node_away(which: str) -> int:
        raise redis.ConnectionError("the node of shard 0 is away")

    b.records.count = node_away  # type: ignore[method-assign]
    counts = Executor(b.records, HandlerResolver([__name__]), 60_000, b.dispatcher).drain(100, linger_s=0)
    assert counts == {"delivered": 3}


def test_a_sweep_goes_on_while_the_ticket_queue_is_away(redis_server: RedisServer, namespace: str) -> None:
    """The tickets a sweep enqueues (for batches it reclaimed, promoted or found stuck) go to the
    queue's Redis, which may be another one: that one away, the sweep still cuts and reclaims,
    no shard goes into backoff, and a later pass enqueues the ticket once it answers."""
    from distbatch.sweeper import Sweeper

    b = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, shards=2)
    b.register("w", version="v1", source="s", handler="m.h",
               batch={"count": 1, "window": "1h", "key": "k"})
    b.emit_many("s", [{"k": i} for i in range(4)])  # ready batches on both shards
    sweeper = Sweeper(b, lease_s=30, nudge_s=0.0)
    assert sweeper.dispatcher is not None
    real = sweeper.dispatcher.ensure

    def queue_away(n: int) -> int:
        raise redis.ConnectionError("the queue's Redis is away")

    sweeper.dispatcher.ensure = queue_away  # type: ignore[method-assign]
    sweeper.run_once()  # no error: the shards answer
    assert all(st.failed_for == 0.0 for st in sweeper._state)
    asked: list[int] = []

    def queue_back(n: int) -> int:
        asked.append(n)
        return real(n)

    sweeper.dispatcher.ensure = queue_back  # type: ignore[method-assign]
    sweeper.run_once()
    assert asked  # the stuck batches' ticket, asked for again


def test_a_ticket_queue_that_hangs_holds_up_one_hand_off_not_every_cut(
        redis_server: RedisServer, namespace: str) -> None:
    """The ticket queue on another Redis that hangs (SIGSTOP): every hand-off waited out the
    socket timeout, so every emit that cut a batch took 5 s, and a sweeper cut one window per
    5 s, the others late. Now the first hand-off that fails pauses hand-offs until the queue
    answers again (a background probe); the batches wait in Redis, and the first hand-off after
    it is back enqueues their ticket."""
    queue = RedisServer().start()
    assert queue.proc is not None
    try:
        b = Batcher.from_url(redis_server.url, namespace=namespace, queue_url=queue.url,
                             clock=ManualClock(0), socket_timeout=1)
        for name, source, count in (("w", "s", 1), ("x", "t", 9)):
            b.register(name, version="v1", source=source, handler="m.h",
                       batch={"count": count, "window": "1s", "key": "k"})
        b.emit("s", {"k": 0})  # a ticket: the queue answers
        queue.proc.send_signal(signal.SIGSTOP)
        took = []
        for i in range(1, 5):
            t0 = time.monotonic()
            assert b.emit("s", {"k": i})[0].batch is not None
            took.append(time.monotonic() - t0)
        assert took[0] < 3 and max(took[1:]) < 0.5, took  # one socket timeout, then none
        b.emit_many("t", [{"k": i} for i in range(5)])
        b.clock.advance("2s")  # type: ignore[union-attr]
        t0 = time.monotonic()
        assert len(b.flush_expired()) == 5 and time.monotonic() - t0 < 0.5  # windows cut on time
        assert b.records.count("ready") == 10  # all stored, none lost
        queue.proc.send_signal(signal.SIGCONT)
        qclient = redis.Redis.from_url(queue.url)
        wait_for(lambda: b.dispatcher is not None and b.dispatcher._away_since is None, 10,
                 "the probe to find the queue back")
        key = make_queue(qclient, b.keys).key
        qclient.delete(key)  # the ticket from before, taken
        b.emit("s", {"k": 9})
        assert qclient.llen(key) == 1  # handed off again
    finally:
        if queue.proc.poll() is None:
            queue.proc.send_signal(signal.SIGCONT)
        queue.cleanup()


def test_a_paused_hand_off_ends_no_drain_and_no_forked_childs_hand_offs(
        redis_server: RedisServer, namespace: str) -> None:
    """With the ticket queue's hand-offs paused, a worker's drain fanned out through the
    dispatcher unguarded: the ticket ended at once ('drain_interrupted'), its batches left
    unrun. And a process forked while paused inherited the pause, but not the thread that ends
    it: its hand-offs stayed skipped for good."""
    from distbatch.dispatch import Dispatcher, QueueAway

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler=f"{__name__}.collect",
               batch={"count": 1, "window": "1h"})
    away = Dispatcher(redis.Redis(port=free_port(), socket_connect_timeout=0.5), b.keys)
    with pytest.raises(redis.ConnectionError):
        away.ensure(1)  # refused: hand-offs pause
    with pytest.raises(QueueAway):
        away.ensure(1)
    b.emit_many("s", [{"n": i} for i in range(3)])
    seen.clear()
    executor = Executor(b.records, HandlerResolver([__name__]), 10_000, dispatcher=away)
    counts = executor.drain(max_batches=10, max_seconds=2, linger_s=0.0)
    assert counts.get("delivered") == 3 and len(seen) == 3 and b.records.count("ready") == 0
    queue = Dispatcher(redis.Redis.from_url(redis_server.url), b.keys)
    queue._away_since, queue._away_pid = time.monotonic(), os.getpid()  # paused here, as above
    with pytest.raises(QueueAway):
        queue.ensure(1)
    child = os.fork()
    if child == 0:  # the queue answers: the child's hand-off goes through
        code = 1
        try:
            code = 0 if queue.ensure(1) == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_stats_events_finds_every_event_in_or_out_and_the_books_balance(
        batcher: Batcher, clock: ManualClock) -> None:
    """`distbatch stats` gave the counters of events in and out, but nothing of those still
    inside (open buffers, ready, running, retry-waiting and dead batches): an operator could not
    check that the numbers add up. `--events` counts them from the data, per binding."""
    from distbatch.stats import collect

    b = batcher
    b.register("a", version="v1", source="s", handler="m.h", batch={"count": 3, "window": "1s", "key": "k"},
               retry={"attempts": 1})
    b.register("big", version="v1", source="s2", handler="m.h", batch={"count": 2000, "window": "1h"})
    b.register("gone", version="v1", source="s3", handler="m.h", batch={"count": 9, "window": "1h"})
    b.register("late", version="v1", source="s4", handler="m.h",
               batch={"count": 9, "window": "1s", "expire_action": "discard"})
    b.emit_many("s", [{"k": "open"}] * 2 + [{"k": "x"}] * 9)  # 2 buffered, 3 batches of 3
    b.emit_many("s2", [{"n": i} for i in range(1030)])  # 1024 buffered, 6 overflowed
    b.emit_many("s3", [{"n": 1}, {"n": 2}])
    b.drop("gone@v1")  # 2 dropped
    b.emit("s4", {"n": 1})
    clock.advance("2s")
    b.flush_expired()  # 1 discarded; a's open window (2 events) cut: 4 batches of a
    claims: list = []
    while len(claims) < 3:  # on a cluster each shard gives its own
        claims += b.records.claim_some(60_000, 3 - len(claims))
    ok, bad, purged = claims
    delivered = b.records.complete(ok.batch.id, ok.token)
    assert b.records.fail(bad.batch.id, bad.token, "boom", None) == "dead"  # dead: still inside
    b.records.fail(purged.batch.id, purged.token, "boom", None)
    assert b.records.purge(purged.batch.id)
    rows = collect(b, events=True)["bindings"]
    assert rows["a@v1"]["events_delivered_total"] == delivered and delivered in (2, 3)
    assert rows["a@v1"]["events_in_batches_now"] == 11 - delivered - len(purged.batch.events)
    assert rows["a@v1"]["events_buffered_now"] == 0
    assert rows["big@v1"]["events_buffered_now"] == 1024 and rows["big@v1"]["events_overflowed_total"] == 6
    assert rows["gone@v1"]["events_dropped_total"] == 2
    assert rows["late@v1"]["events_discarded_total"] == 1
    assert {k: r["events_unaccounted"] for k, r in rows.items()} == dict.fromkeys(rows, 0)
    (k,) = [k for k in b.shards if b.client.scard(k.open_buffers("big@v1"))]
    (member,) = b.client.smembers(k.open_buffers("big@v1"))
    b.client.rpush(k.buffer_prefix.encode() + member, b"lost?")  # an event nobody counted in
    assert collect(b, events=True)["bindings"]["big@v1"]["events_unaccounted"] == -1
    assert "events_unaccounted" not in collect(b)["bindings"]["a@v1"]  # only when asked: it reads all


def test_the_bindings_a_worker_keeps_stay_bounded(batcher: Batcher) -> None:
    """Batch records name their binding; a worker reads each one (at most every few seconds)
    and keeps it: records naming ever new bindings (a hostile writer's) do not grow it."""
    executor = Executor(batcher.records, HandlerResolver(), lease_ms=1000)
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h"})
    for i in range(1500):
        assert executor._binding(f"fake{i}@v1") is None
    assert executor._binding("d@v1") is not None
    assert len(executor._bindings) <= 1024


@pytest.mark.parametrize("skew_s", [-30, 30])
def test_a_sweeper_on_a_host_whose_clock_is_off_is_seen_live(redis_server: RedisServer, namespace: str,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             skew_s: int) -> None:
    """Its heartbeat was scored by its host's clock and read by Redis': 30 s behind, `stats` and
    /healthz saw no sweeper at all; 30 s ahead, it pushed every other sweeper's heartbeat out."""
    from distbatch.stats import collect
    from distbatch.sweeper import Sweeper

    b = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, handoff=False)
    on_time = Sweeper(b, lease_s=3)
    on_time._own()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_s)
    Sweeper(b, lease_s=3)._own()
    monkeypatch.setattr(time, "time", real)
    assert collect(b)["sweepers_live"] == 2


@pytest.mark.parametrize("how", ["closed", "dropped"])
def test_the_probe_of_a_queue_away_ends_with_its_batcher(redis_server: RedisServer, namespace: str,
                                                         how: str) -> None:
    """The probe asked a queue that never answers (a mistyped or retired --queue-url) for good,
    one thread and one connection per Batcher ever made, closed or dropped."""
    import gc
    import threading

    from distbatch.testing import free_port

    def probes() -> int:
        return sum(t.name == "distbatch-queue-probe" and t.is_alive() for t in threading.enumerate())

    before = probes()
    b = Batcher.from_url(redis_server.url, namespace=namespace, queue_url=f"redis://127.0.0.1:{free_port()}/0",
                         socket_timeout=1)
    b.register("w", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1s"})
    assert b.emit("s", {"k": 0})[0].batch is not None  # stored; its hand-off failed
    assert probes() == before + 1
    if how == "closed":
        with b:
            pass
        wait_for(lambda: probes() == before, 2, "the probe to end")
    else:
        del b
        gc.collect()
        wait_for(lambda: probes() == before, 8, "the probe to end")  # at its next ask (<= 5 s)


async def async_collect(batch: Batch) -> None:
    import asyncio

    await asyncio.sleep(0)
    seen.append(batch)


async def async_boom(batch: Batch) -> None:
    raise RuntimeError("an async handler's own failure")


def generator_handler(batch: Batch) -> Any:
    seen.append(batch)
    yield


@pytest.mark.parametrize(("name", "outcome"), [("async_collect", "delivered"), ("async_boom", "dead"),
                                               ("generator_handler", "dead")])
def test_an_async_handler_is_awaited_and_a_generator_is_no_handler(batcher: Batcher, name: str,
                                                                   outcome: str) -> None:
    """An `async def` handler's coroutine was dropped unawaited: its body never ran, a raise in
    it never failed the batch, and the batch was counted delivered and its events deleted."""
    seen.clear()
    batcher.register("a", version="v1", source="s", handler=f"{__name__}.{name}",
                     batch={"count": 1, "window": "1h"}, retry={"attempts": 1})
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None
    counts = Executor(batcher.records, HandlerResolver([__name__]), 60_000).drain(100, linger_s=0)
    assert counts == {outcome: 1}
    assert [b.id for b in seen] == ([r.batch.id] if name == "async_collect" else [])
    if outcome == "dead":
        from distbatch import dead

        (row,) = dead.rows(batcher)
        why = "an async handler's own failure" if name == "async_boom" else "is a generator function"
        assert row["id"] == r.batch.id and why in row["error"]


async def async_sleeper(batch: Batch) -> None:
    import asyncio

    await asyncio.sleep(5)
    seen.append(batch)


def test_an_async_handler_past_its_timeout_is_interrupted(batcher: Batcher) -> None:
    seen.clear()
    batcher.register("a", version="v1", source="s", handler=f"{__name__}.async_sleeper",
                     batch={"count": 1, "window": "1h"}, retry={"attempts": 1, "timeout": "200ms"})
    batcher.emit("s", {"n": 1})
    t0 = time.monotonic()
    counts = Executor(batcher.records, HandlerResolver([__name__]), 60_000).drain(100, linger_s=0)
    assert counts == {"dead": 1} and seen == [] and time.monotonic() - t0 < 2


def test_a_handler_defined_in_the_script_being_run_is_refused_at_register(batcher: Batcher) -> None:
    """`register(handler=digest)` from a script stored `__main__.digest`: no worker can import
    that (its own __main__ is distbatch's CLI), so every batch went back every 5 s, for good."""
    from distbatch import ConfigError

    def digest(batch: Batch) -> None: ...

    digest.__module__ = "__main__"
    digest.__qualname__ = "digest"
    for fn in (digest, "__main__.digest"):
        with pytest.raises(ConfigError) as err:
            batcher.register("m", version="v1", source="s", handler=fn, batch={"count": 1, "window": "1h"})
        assert err.value.code == "handler_invalid" and "__main__" in str(err.value)


def test_a_max_sleep_longer_than_the_lease_renewals_is_said_to_be_cut(
        redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    """`--max-sleep 1h` was taken and logged as max_sleep=3600.0s, and slept at most 1 s."""
    import logging

    from distbatch.sweeper import Sweeper

    b = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, handoff=False)
    stop = threading.Event()
    stop.set()  # one look at the start, then out
    with caplog.at_level(logging.INFO, logger="distbatch"):
        Sweeper(b, max_sleep_s=3600).run(stop)
    text = caplog.text
    assert "max_sleep=3600.0s is cut to 1.0s" in text and "max_sleep=1.0s" in text


def test_a_lease_renewal_that_fails_for_no_outage_says_why_a_few_times_a_minute(
        redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The lease keeper took any failure for a blip: one warning line at every renewal (every
    lease/3, for as long as it lasted), with no traceback, so a bug in it, or an ACL that refuses
    the renewal, said neither where nor why (the structure review). An outage still gets its
    one line; anything else is an error with its traceback, at most three a minute, and the
    renewals go on."""
    b = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, handoff=False)
    b.register("f", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None
    rec = b.records
    claim = rec.claim([r.batch.id], 300)
    assert claim is not None
    tries: list[int] = []

    def broken(held: Any, lease_ms: int) -> list[bool | None]:
        tries.append(len(held))
        raise RuntimeError("a bug in the renewal")

    monkeypatch.setattr(rec, "renew_many", broken)
    ex = Executor(rec, HandlerResolver(["m"]), lease_ms=300)
    with caplog.at_level(logging.WARNING, logger="distbatch"):
        ex.leases.hold(r.batch.id, claim.token, None)
        try:
            wait_for(lambda: len(tries) >= 8, 10, "eight renewals")
        finally:
            ex.leases.release(r.batch.id)
    said = [x for x in caplog.records if "renewal" in x.getMessage()]
    assert len(said) == 3, [x.getMessage() for x in said]
    assert all("lease_renewal_error: RuntimeError: a bug in the renewal" in x.getMessage() and x.exc_info
               for x in said)
