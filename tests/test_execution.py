"""Running batches in-process: claims, leases, retries, dead batches, allowlists, no pickle."""

from __future__ import annotations

import json
import pickle
import threading
import time
import zlib

import pytest
import redis
from rq import SimpleWorker

from distbatch import Batch, Batcher, ManualClock
from distbatch.dispatch import attach, make_queue
from distbatch.executor import Executor
from distbatch.handlers import HandlerResolver, handler

from .redis_server import RedisServer

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


def test_executor_delivers_and_deletes_record(batcher: Batcher, client) -> None:
    batcher.register("d", version="v1", source="s", handler=collect, batch={"count": 2, "window": "1s"})
    (_, r) = batcher.emit_many("s", [{"n": 1}, {"n": 2}])
    out = Executor(batcher, HandlerResolver()).run(r.batch.id)
    assert out.status == "delivered" and out.attempt == 1
    assert [e.payload for e in seen[0].events] == [{"n": 1}, {"n": 2}] and seen[0].attempt == 1
    assert not client.exists(batcher.keys.batch(r.batch.id))
    assert Executor(batcher, HandlerResolver()).run(r.batch.id).status == "gone"
    assert client.hget(batcher.keys.stats, "events_delivered:d@v1") == b"2"


def test_claim_is_exclusive_while_lease_lives(batcher: Batcher) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1s"})
    bid = batcher.emit("s", {})[0].batch.id
    assert batcher.claim(bid, 60_000).status == "claimed"
    assert batcher.claim(bid, 60_000).status == "busy"
    assert batcher.fail(bid, "lease", 0, only_if_expired=True) == "unchanged"


def test_expired_lease_can_be_reclaimed(batcher: Batcher) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1s"})
    bid = batcher.emit("s", {})[0].batch.id
    assert batcher.claim(bid, -1).status == "claimed"  # lease already over: its worker is gone
    assert batcher.fail(bid, "lease expired", 0, only_if_expired=True) == "retry"
    c = batcher.claim(bid, 60_000)
    assert c.status == "claimed" and c.batch.attempt == 2


def test_retries_with_attempt_then_dead_then_replay(batcher: Batcher, client) -> None:
    batcher.register("d", version="v1", source="s", handler=f"{__name__}.always_raises",
                     batch={"count": 1, "window": "1s"}, retry={"attempts": 3, "backoff": "1ms"})
    bid = batcher.emit("s", {})[0].batch.id
    ex = Executor(batcher, HandlerResolver([__name__]))
    assert [ex.run(bid).status for _ in range(3)] == ["retry", "retry", "dead"]
    assert client.zscore(batcher.keys.dead, bid) is not None
    assert "boom on attempt 3" in batcher.batch_error(bid)
    assert ex.run(bid).status == "dead"
    assert batcher.replay(bid)
    assert ex.run(bid).attempt == 1


def test_backoff_grows_and_is_capped() -> None:
    from distbatch.config import RetryPolicy

    p = RetryPolicy.parse({"attempts": 5, "backoff": "1s", "backoff_factor": 3, "max_backoff": "5s"})
    assert [p.delay_ms(a) for a in (1, 2, 3)] == [1000, 3000, 5000]


def test_refused_handler_is_never_imported_and_batch_goes_dead(batcher: Batcher, client) -> None:
    batcher.register("d", version="v1", source="s", handler="os.system", batch={"count": 1, "window": "1s"})
    bid = batcher.emit("s", {"cmd": "touch /tmp/pwned"})[0].batch.id
    out = Executor(batcher, HandlerResolver(["tests.handlers", "osx"])).run(bid)
    assert out.status == "refused"
    assert "HandlerNotAllowed" in batcher.batch_error(bid) and "os.system" in batcher.batch_error(bid)
    assert client.zscore(batcher.keys.dead, bid) is not None


def test_allowlist_is_by_module_prefix_not_string_prefix() -> None:
    r = HandlerResolver(["tests.handlers"])
    assert r.allowed("tests.handlers.record")
    assert not r.allowed("tests.handlers_evil.record")
    assert not r.allowed("tests.handler")


def test_rq_job_is_json_not_pickle_and_runs_in_simple_worker(
    redis_server: RedisServer, namespace: str
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    b = attach(Batcher(client, namespace=namespace, clock=ManualClock(0)))
    b.register("d", version="v1", source="s", handler=collect, batch={"count": 2, "window": "1s"})
    bid = b.emit_many("s", [{"n": 1}, {"n": 2}])[1].batch.id
    job_key = f"rq:job:distbatch-{namespace}-{bid}"
    data = client.hget(job_key, "data")
    assert not data.startswith(b"\x80")  # pickle protocol 2+ header
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(zlib.decompress(data))
    func, _instance, args, _kwargs = json.loads(zlib.decompress(data))
    assert func == "distbatch.jobs.run_batch" and args == [namespace, bid]
    from distbatch import jobs

    jobs.configure(b, HandlerResolver(), 5000)
    worker = SimpleWorker([make_queue(b)], connection=client, serializer=make_queue(b).serializer)
    assert worker.work(burst=True, logging_level="ERROR")
    assert [e.payload["n"] for e in seen[0].events] == [1, 2]
    assert client.zcard(b.keys.ready) == 0 and not client.exists(b.keys.batch(bid))


def test_sweeper_reenqueues_a_job_taken_by_a_worker_that_died_before_claiming(client, namespace) -> None:
    from distbatch.dispatch import Dispatcher, job_id
    from distbatch.sweeper import Sweeper

    b = Batcher(client, namespace=namespace, handoff_grace_ms=0)
    dispatcher = Dispatcher(b, redeliver_after_ms=0)
    b.on_cut = dispatcher
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1m"})
    bid = b.emit("s", {})[0].batch.id
    queue, jid = dispatcher.queue.key, job_id(namespace, bid)
    sweeper = Sweeper(b, dispatcher)
    sweeper.run_once()
    assert client.lrange(queue, 0, -1) == [jid.encode()]  # still queued: not enqueued twice
    client.lpop(queue)  # a worker took the job and died before claiming the batch
    sweeper.run_once()
    assert client.lrange(queue, 0, -1) == [jid.encode()]
    assert sweeper.handed_off == 1


def test_a_long_handler_keeps_its_lease(redis_server: RedisServer) -> None:
    """A handler running for several leases is never reclaimed; its lease keeps moving forward."""
    b = Batcher.from_url(redis_server.url, namespace="lease-keep")
    started.clear()
    b.register("slow", version="v1", source="s", handler=slow, batch={"count": 1, "window": "1h"})
    (r,) = b.emit("s", {"n": 1})
    executor = Executor(b, HandlerResolver(), lease_ms=300)
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(executor.run(r.batch.id).status))
    runner.start()
    assert started.wait(5)
    deadlines = []
    for _ in range(4):  # 1 s: more than three leases of 300 ms
        time.sleep(0.25)
        deadlines.append(b.client.zscore(b.keys.running, r.batch.id))
        assert b.fail(r.batch.id, "reclaim", 0, only_if_expired=True) == "unchanged"
    runner.join(5)
    assert outcome == ["delivered"] and len(seen) == 1
    assert deadlines == sorted(deadlines) and len(set(deadlines)) >= 3
    assert not b.client.zscore(b.keys.running, r.batch.id)


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


def test_hand_off_pushes_the_due_time_out_from_the_cut_and_from_the_sweep(
    client, namespace, make_batcher
) -> None:
    """The new due time of an enqueued batch is the cut's (or the sweep's) server time plus the
    redelivery delay, written in the enqueue's own transaction."""
    from distbatch.dispatch import Dispatcher
    from distbatch.sweeper import Sweeper

    b = attach(make_batcher(), redeliver_after_ms=7_000)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "5s"})
    (_, r) = b.emit_many("s", [{"n": 1}, {"n": 2}])
    assert client.zscore(b.keys.ready, r.batch.id) == r.batch.cut_at_ms + 7_000
    b.emit("s", {"n": 3})  # a partial batch, cut by the sweeper once its window ran out
    b.clock.advance("5s")
    sweeper = Sweeper(b, Dispatcher(b, redeliver_after_ms=9_000))
    sweeper.run_once()
    ((bid, due),) = [(i.decode(), s) for i, s in client.zrange(b.keys.ready, 0, -1, withscores=True)
                     if i.decode() != r.batch.id]
    assert due == b.get_batch(bid).cut_at_ms + 9_000
    assert len(client.lrange(make_queue(b).key, 0, -1)) == 2
