"""The pipeline across real OS processes: producers, workers, sweepers, and kill -9 of each."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from distbatch import Batcher
from distbatch.cli import main as cli

from .processes import Procs, delivered, wait_for
from .redis_server import RedisServer

NS = "e2e"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.cleanup()


@pytest.fixture
def procs(server: RedisServer, tmp_path: Path) -> Iterator[Procs]:
    p = Procs(server.url, NS, tmp_path)
    yield p
    p.stop_all()


@pytest.fixture
def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


@pytest.fixture
def batcher(server: RedisServer) -> Batcher:
    return Batcher.from_url(server.url, namespace=NS)


def _events(rows: list[dict]) -> Counter:
    return Counter(e for r in rows for e in r["events"])


def test_end_to_end_2_workers_1_sweeper_3_producers(procs: Procs, client, batcher) -> None:
    batcher.register("e2e", version="v1", source="s", handler="tests.handlers.record",
                     batch={"count": 10, "window": "200ms", "key": "k"})
    workers = [procs.worker("--lease", "5s") for _ in range(2)]
    procs.sweeper()
    producers = [procs.producer(p, 10_000, "dispatch", keys=100) for p in range(3)]
    for p in producers:
        assert p.wait(120) == 0, procs.logs()
    wait_for(lambda: sum(len(r["events"]) for r in delivered(client)) >= 30_000, 120,
             "30,000 events delivered", procs.logs)
    rows = delivered(client)
    events = _events(rows)
    assert len(events) == 30_000 and max(events.values()) == 1  # each exactly once
    assert {r["pid"] for r in rows} == {w.pid for w in workers}  # both workers took batches
    for r in rows:
        assert r["binding"] == "e2e@v1"
        assert {p["k"] for p in r["payloads"]} == {r["partition_key"]}
        if r["reason"] == "count":
            assert len(r["events"]) == 10
        else:
            assert r["reason"] == "expired" and 0 < len(r["events"]) < 10
    assert any(r["reason"] == "expired" for r in rows)
    stats = client.hgetall(batcher.keys.stats)
    assert int(stats[b"events_in:e2e@v1"]) == int(stats[b"events_delivered:e2e@v1"]) == 30_000
    assert client.zcard(batcher.keys.ready) == client.zcard(batcher.keys.running) == 0


def test_worker_killed_mid_handler_batch_runs_again(procs: Procs, client, batcher) -> None:
    batcher.register("slow", version="v1", source="s", handler="tests.handlers.slow_record",
                     batch={"count": 10, "window": "300ms", "key": "k"})
    env = {"TEST_HANDLER_SLEEP": "0.4"}
    victim = procs.worker("--lease", "1s", env=env)
    procs.sweeper()
    assert procs.producer(0, 200, "dispatch", keys=5).wait(60) == 0
    wait_for(lambda: client.get(f"test:inflight:{victim.pid}") is not None, 30, "a batch in flight")
    batch_id = client.get(f"test:inflight:{victim.pid}").decode()
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert batch_id not in {r["id"] for r in delivered(client)}
    survivor = procs.worker("--lease", "1s", env=env)
    wait_for(lambda: len(_events(delivered(client))) >= 200, 60, "every event delivered", procs.logs)
    rows = delivered(client)
    again = [r for r in rows if r["id"] == batch_id]
    assert again and again[0]["pid"] == survivor.pid and again[0]["attempt"] >= 2
    events = _events(rows)
    stats = client.hgetall(batcher.keys.stats)
    discarded = int(stats.get(b"events_discarded:slow@v1", 0))
    assert int(stats[b"events_in:slow@v1"]) == 200 == len(events) + discarded
    assert min(events.values()) >= 1


def test_producer_killed_between_cut_and_enqueue_sweeper_hands_off(
    procs: Procs, client, batcher
) -> None:
    batcher.register("orphan", version="v1", source="s", handler="tests.handlers.record",
                     batch={"count": 5, "window": "1h"})
    producer = procs.producer(0, 100, "crash")
    assert producer.wait(60) == -signal.SIGKILL
    assert client.zcard(batcher.keys.ready) == 1  # the cut is recorded ...
    assert client.llen("rq:queue:distbatch-" + NS) == 0  # ... but no job was enqueued
    procs.worker()
    assert client.llen(delivered.__globals__["DELIVERED"]) == 0
    procs.sweeper()
    wait_for(lambda: len(delivered(client)) == 1, 30, "the orphaned batch delivered", procs.logs)
    (row,) = delivered(client)
    assert [p["i"] for p in row["payloads"]] == [0, 1, 2, 3, 4] and row["reason"] == "count"


def test_flaky_handler_succeeds_on_attempt_3(procs: Procs, client, batcher) -> None:
    batcher.register("flaky", version="v1", source="s", handler="tests.handlers.flaky",
                     batch={"count": 2, "window": "1h"}, retry={"attempts": 3, "backoff": "50ms"})
    procs.worker()
    procs.sweeper()
    assert procs.producer(0, 2, "dispatch").wait(30) == 0
    wait_for(lambda: len(delivered(client)) == 1, 30, "delivery on the third try", procs.logs)
    assert delivered(client)[0]["attempt"] == 3


def test_always_failing_batch_goes_dead_and_replay_runs_it(procs: Procs, client, batcher, server) -> None:
    batcher.register("broken", version="v1", source="s", handler="tests.handlers.broken_until_fixed",
                     batch={"count": 2, "window": "1h"}, retry={"attempts": 2, "backoff": "50ms"})
    procs.worker()
    procs.sweeper()
    assert procs.producer(0, 2, "dispatch").wait(30) == 0
    wait_for(lambda: client.zcard(batcher.keys.dead) == 1, 30, "a dead batch", procs.logs)
    runner = CliRunner()
    args = ["--redis-url", server.url, "--namespace", NS]
    listed = runner.invoke(cli, ["dead", "list", *args])
    assert listed.exit_code == 0 and "ValueError: handler is broken" in listed.output
    assert '"attempts": 2' in listed.output
    client.set("test:fixed", 1)
    replay = runner.invoke(cli, ["dead", "replay", "--all", *args])
    assert replay.exit_code == 0 and "replayed" in replay.output
    wait_for(lambda: len(delivered(client)) == 1, 30, "the replayed batch delivered", procs.logs)
    assert delivered(client)[0]["attempt"] == 1
    assert client.zcard(batcher.keys.dead) == 0


def test_worker_refuses_handler_outside_allowlist_and_leaves_the_batch(procs: Procs, client, batcher) -> None:
    """A worker that may not run a handler (wrong --handlers, a rolling deploy) never kills the
    batch: it goes back uncounted, and a worker that can run it delivers it."""
    batcher.register("other", version="v1", source="s", handler="tests.handlers.record",
                     batch={"count": 1, "window": "1h"})
    procs.spawn("-m", "distbatch.cli", "worker", "--redis-url", procs.url, "--namespace", NS,
                "--handlers", "workers.handlers", name="worker")  # allowlist: not tests.handlers
    procs.sweeper()
    assert procs.producer(0, 1, "dispatch").wait(30) == 0
    wait_for(lambda: any(b"HandlerNotAllowed" in e for e in client.hvals(batcher.keys.rec_error)), 30,
             "the first worker to give the batch back", procs.logs)
    assert client.zcard(batcher.keys.dead) == 0
    procs.worker()
    wait_for(lambda: len(delivered(client)) == 1, 30, "delivery by a worker that can run it", procs.logs)
    assert delivered(client)[0]["attempt"] == 1


def test_sigterm_finishes_the_batch_in_hand(procs: Procs, client, batcher) -> None:
    batcher.register("slow", version="v1", source="s", handler="tests.handlers.slow_record",
                     batch={"count": 1, "window": "1h"})
    w = procs.worker(env={"TEST_HANDLER_SLEEP": "1.0"})
    assert procs.producer(0, 1, "dispatch").wait(30) == 0
    wait_for(lambda: client.get(f"test:inflight:{w.pid}") is not None, 30, "the batch in flight")
    w.send_signal(signal.SIGTERM)
    assert w.wait(30) == 0
    (row,) = delivered(client)
    assert row["pid"] == w.pid and client.zcard(batcher.keys.running) == 0


def test_a_hung_handler_is_interrupted_at_its_timeout_and_the_worker_goes_on(
        procs: Procs, client, batcher) -> None:
    """A handler past `retry.timeout` only stopped being renewed: its batch went elsewhere once
    the lease ran out, but the worker stayed inside it, running no other batch. Now it is
    interrupted (even through the handler's own `except Exception`), failed and retried, and the
    same worker runs the next batch."""
    batcher.register("hang", version="v1", source="h", handler="tests.handlers.hang_first",
                     batch={"count": 1, "window": "1h"}, retry={"timeout": "1s", "backoff": "100ms"})
    batcher.register("fast", version="v1", source="f", handler="tests.handlers.record",
                     batch={"count": 1, "window": "1h"})
    w = procs.worker("--lease", "30s")  # a lease far longer than the test: no reclaim helps
    procs.sweeper()  # promotes the retry when its backoff ends
    batcher.emit("h", {"n": 1})
    wait_for(lambda: client.get(f"test:inflight:{w.pid}") is not None, 30, "the hang", procs.logs)
    batcher.emit("f", {"n": 2})
    wait_for(lambda: len(delivered(client)) == 2, 20, "both batches by the one worker", procs.logs)
    rows = {r["binding"]: r for r in delivered(client)}
    assert rows["hang@v1"]["attempt"] == 2 and {r["pid"] for r in rows.values()} == {w.pid}
    assert client.zcard(batcher.keys.dead) == 0 and client.zcard(batcher.keys.running) == 0


def test_sigterm_while_a_handler_hangs_ends_the_worker_at_the_handlers_timeout(
        procs: Procs, client, batcher) -> None:
    """SIGTERM waits for the batch in hand; a hung one used to make it wait for ever (until a
    second signal). Bounded by its timeout, the worker exits, and the batch is retried."""
    batcher.register("hang", version="v1", source="h", handler="tests.handlers.hang_first",
                     batch={"count": 1, "window": "1h"}, retry={"timeout": "2s", "backoff": "100ms"})
    w = procs.worker("--lease", "30s")
    batcher.emit("h", {"n": 1})
    wait_for(lambda: client.get(f"test:inflight:{w.pid}") is not None, 30, "the hang", procs.logs)
    w.send_signal(signal.SIGTERM)
    assert w.wait(15) == 0, procs.logs()
    procs.sweeper()
    procs.worker()
    wait_for(lambda: len(delivered(client)) == 1, 30, "the retry, by the next worker", procs.logs)
    assert delivered(client)[0]["attempt"] == 2


def test_redis_restart_with_aof_loses_nothing(tmp_path: Path) -> None:
    """Restart Redis (AOF, fsync always) under workers and a sweeper: they reconnect and every
    acknowledged event is delivered."""
    server = RedisServer("--appendfsync", "always", appendonly=True).start()
    procs = Procs(server.url, NS, tmp_path)
    try:
        client = redis.Redis.from_url(server.url)
        b = Batcher.from_url(server.url, namespace=NS)
        b.register("r", version="v1", source="s", handler="tests.handlers.record",
                   batch={"count": 10, "window": "300ms", "key": "k"})
        procs.worker("--lease", "2s", "--name", "fixed-name")  # a fixed name must survive it too
        procs.sweeper()
        b.emit_many("s", [{"k": i % 7, "n": i} for i in range(500)])
        assert client.zcard(b.keys.deadlines) == 7  # open windows ride through the restart
        workers_before = [p for p in procs.procs if p.poll() is None]
        server.stop()  # SIGTERM: Redis finishes its AOF and exits
        time.sleep(1.5)  # long enough for RQ's loop to notice and quit
        server.start()  # same port, same dir: the AOF is replayed
        for i in range(500, 1000):
            b.emit("s", {"k": i % 7, "n": i})
        wait_for(lambda: len(_events(delivered(client))) >= 1000, 60,
                 "every event delivered after the restart", procs.logs)
        assert int(client.hget(b.keys.stats, "events_in:r@v1")) == 1000
        assert all(p.poll() is None for p in workers_before), "a worker or sweeper exited on the restart"
        assert "Traceback" not in procs.logs(), procs.logs()  # one line per failure, no traces
    finally:
        procs.stop_all()
        server.cleanup()


def test_redis_restart_without_persistence_leaves_a_running_app_working(tmp_path: Path) -> None:
    """Redis restarted with no persistence under a long-lived app, workers and a sweeper: what was
    buffered is gone (README says so), but the app's events after it were stored nowhere before
    (its bindings went with the data; `source_unbound`). It stores its bindings again and every
    event acknowledged after the restart is delivered."""
    server = RedisServer().start()
    procs = Procs(server.url, NS, tmp_path)
    try:
        client = redis.Redis.from_url(server.url)
        b = Batcher.from_url(server.url, namespace=NS)
        b.register("r", version="v1", source="s", handler="tests.handlers.record",
                   batch={"count": 10, "window": "300ms", "key": "k"})
        procs.worker("--lease", "2s")
        procs.sweeper()
        b.emit_many("s", [{"k": i % 7, "n": i} for i in range(100)])
        running = [p for p in procs.procs if p.poll() is None]
        server.stop(kill=True)
        time.sleep(1.5)
        server.start()  # empty
        acked = 0
        for i in range(100, 600):
            acked += len(b.emit("s", {"k": i % 7, "n": i}))
        assert acked == 500
        wait_for(lambda: len(_events(delivered(client))) >= 500, 60,
                 "every event acknowledged after the restart delivered", procs.logs)
        seen = _events(delivered(client))
        assert len(seen) == 500 and set(seen.values()) == {1}  # each once
        assert int(client.hget(b.keys.stats, "events_in:r@v1")) == 500
        assert all(p.poll() is None for p in running), "a worker or sweeper exited on the restart"
    finally:
        procs.stop_all()
        server.cleanup()


def test_a_worker_paused_while_waiting_on_the_bell_never_runs_the_batch_its_claim_took(
    procs: Procs, client: redis.Redis, batcher: Batcher
) -> None:
    """A lingering worker's claim rides behind its wait on the bell, so Redis claims a batch for it
    the moment the bell rings, paused or not. SIGSTOP it while it waits, cut a batch: the batch
    is its own until the lease runs out, then a sweeper reclaims it and a second worker runs it.
    SIGCONT: the first worker reads a claim whose lease ran out long ago and must not run it."""
    batcher.register("r", version="v1", source="s", handler="tests.handlers.record",
                     batch={"count": 1, "window": "1h"}, retry={"attempts": 5})
    first = procs.worker("--lease", "1s")
    procs.sweeper()
    for i in range(0, 10, 2):  # until the pause finds the worker waiting on the bell
        n = len(delivered(client))
        batcher.emit("s", {"n": i})  # it runs this one, then lingers on the bell for 1 s
        wait_for(lambda n=n: len(delivered(client)) == n + 1 and client.zcard(batcher.keys.running) == 0,
                 30, "a batch run and completed", procs.logs)
        os.kill(first.pid, signal.SIGSTOP)  # completed: the wait on the bell is next in its pipeline
        (r,) = batcher.emit("s", {"n": i + 1})
        assert r.batch is not None
        time.sleep(0.3)
        if client.zscore(batcher.keys.running, r.batch.id) is not None:
            break  # claimed for the paused worker
        os.kill(first.pid, signal.SIGCONT)  # it was not on the bell yet: let it run this one
        wait_for(lambda n=n: len(delivered(client)) == n + 2, 30, "a batch", procs.logs)
    else:
        raise AssertionError("the worker was never caught waiting on the bell")
    try:
        procs.worker("--lease", "1s")
        wait_for(lambda: r.batch is not None and r.batch.id in {x["id"] for x in delivered(client)}, 30,
                 "the batch run by the second worker", procs.logs)
        time.sleep(1.5)  # the first worker's claim is now older than its lease by far
    finally:
        os.kill(first.pid, signal.SIGCONT)
    wait_for(lambda: "lease_lost" in procs.logs(), 10, "the resumed worker to drop its stale claim",
             procs.logs)
    time.sleep(0.5)
    runs = [x for x in delivered(client) if x["id"] == r.batch.id]
    assert len(runs) == 1 and runs[0]["pid"] != first.pid, runs
    ids = [x["id"] for x in delivered(client)]
    assert len(ids) == len(set(ids)), delivered(client)
    assert client.hget(batcher.keys.stats, "batches_delivered:r@v1") == str(len(ids)).encode()


def test_worker_paused_past_its_lease_cannot_touch_the_batch(procs: Procs, client, batcher) -> None:
    """SIGSTOP a worker mid-handler past its lease: a sweeper reclaims the batch and a second
    worker runs it. SIGCONT: the first worker's handler finishes, but its complete is refused
    (lease_lost), and the batch is completed exactly once, by the worker that holds it."""
    batcher.register("slow", version="v1", source="s", handler="tests.handlers.slow_record",
                     batch={"count": 1, "window": "1h"}, retry={"attempts": 5})
    first = procs.worker("--lease", "1s", env={"TEST_HANDLER_SLEEP": "1.5"})
    procs.sweeper()
    assert procs.producer(0, 1, "dispatch").wait(30) == 0
    wait_for(lambda: client.get(f"test:inflight:{first.pid}") is not None, 30, "the batch in flight",
             procs.logs)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = procs.worker("--lease", "1s", env={"TEST_HANDLER_SLEEP": "1.5"})
        wait_for(lambda: client.get(f"test:inflight:{second.pid}") is not None, 30,
                 "the batch re-run by the second worker", procs.logs)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    wait_for(lambda: len(delivered(client)) == 2 and client.zcard(batcher.keys.running) == 0, 30,
             "both handlers to return", procs.logs)
    rows = delivered(client)
    assert {r["pid"] for r in rows} == {first.pid, second.pid} and len({r["id"] for r in rows}) == 1
    stats = client.hgetall(batcher.keys.stats)
    assert stats[b"batches_delivered:slow@v1"] == b"1" and stats[b"events_delivered:slow@v1"] == b"1"
    assert all(client.zcard(k) == 0 for k in (batcher.keys.ready, batcher.keys.dead, batcher.keys.delayed))
    assert not client.hexists(batcher.keys.rec_info, rows[0]["id"])
    wait_for(lambda: "lease_lost" in procs.logs(), 10, "the paused worker to say it lost the lease",
             procs.logs)


def test_a_worker_whose_claim_replies_were_lost_runs_the_batch_at_once_not_after_its_lease(
        server: RedisServer, client, batcher, tmp_path: Path) -> None:
    """A real worker, waiting on the bell, whose claim Redis ran while both its replies (the
    send and the resend) were lost: with nothing else ready and no ticket, no later claim carried
    its token, so the batch waited out its lease unrun and went dead with one attempt (`lease
    expired`). The worker now asks again for that claim, and runs the batch at once, as try 1."""
    from rq.registry import FailedJobRegistry

    from distbatch.faultproxy import FaultProxy

    batcher.register("one", version="v1", source="s", batch={"count": 1, "window": "1h"},
                     handler="tests.handlers.record", retry={"attempts": 1})
    with FaultProxy("127.0.0.1", server.port).start() as proxy:
        procs = Procs(proxy.url, NS, tmp_path, env={"TEST_RECORD_URL": server.url})
        sweeping = Procs(server.url, NS, tmp_path)  # straight to Redis: only the worker's replies are lost
        try:
            procs.worker("--lease", "2s")
            sweeping.sweeper()
            wait_for(lambda: bool(client.keys("rq:worker:*")), 20, "the worker up", procs.logs)
            time.sleep(1)  # waiting for tickets
            proxy.drop_next_reply(batcher.shards[0].bell.encode(), times=2)  # the claim and its resend
            (r,) = batcher.emit("s", {"x": 1})
            assert r.batch is not None
            wait_for(lambda: bool(delivered(client)), 10, "the batch delivered", procs.logs)
            assert not proxy.armed  # both replies were lost
            (row,) = delivered(client)
            assert (row["id"], row["attempt"]) == (r.batch.id, 1)
            assert row["start_ms"] - row["cut_ms"] < 1_000, procs.logs()  # within half the lease
            assert client.zcard(batcher.shards[0].dead) == 0
            # and the ticket did not fail: the drain got its claim's reply, not an error
            assert FailedJobRegistry(batcher.keys.queue_name, connection=client).count == 0, procs.logs()
        finally:
            procs.stop_all()
            sweeping.stop_all()


def test_a_worker_killed_mid_round_sends_no_batch_it_had_not_started_to_the_dead(
        procs: Procs, client, batcher) -> None:
    """A warm worker claims the batches a handler's 10 ms allow at once (up to 16) and runs them
    in turn. SIGKILLed while the first ran, every batch in its hand lost a try: with one attempt,
    those no handler had seen went dead (helper's run: 7 of 16). Now none of them is counted:
    each runs again alone, and the one that was running goes dead when it takes its worker down
    a second time, alone."""
    batcher.register("one", version="v1", source="s", handler="tests.handlers.sleep_if_asked",
                     batch={"count": 1, "window": "1h"}, retry={"attempts": 1})
    w = procs.worker("--lease", "1s")
    procs.sweeper("--max-sleep", "200ms")
    batcher.emit_many("s", [{"n": i} for i in range(20)])  # fast handlers: the worker warms up
    wait_for(lambda: len(delivered(client)) == 20, 30, "the warm-up", procs.logs)
    batcher.emit_many("s", [{"n": 100, "sleep": 30}, *({"n": 101 + i} for i in range(10))])
    wait_for(lambda: client.get(f"test:inflight:{w.pid}") is not None, 30, "the long handler", procs.logs)
    long_one = client.get(f"test:inflight:{w.pid}")
    assert batcher.records.count("running") > 1  # claimed together: the others wait behind it
    w.send_signal(signal.SIGKILL)
    w.wait()
    again = [procs.worker("--lease", "1s") for _ in range(2)]  # one runs the long one again, alone
    wait_for(lambda: len(delivered(client)) >= 30, 30, "the batches behind the killed one", procs.logs)
    wait_for(lambda: any(client.get(f"test:inflight:{p.pid}") == long_one for p in again), 30,
             "the long one, alone", procs.logs)
    (holder,) = [p for p in again if client.get(f"test:inflight:{p.pid}") == long_one]
    assert batcher.records.count("running") == 1
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    wait_for(lambda: batcher.records.count("dead") == 1, 30, "the killed one to go dead", procs.logs)
    got = sorted(p["n"] for r in delivered(client) for p in r["payloads"])
    assert got == list(range(20)) + list(range(101, 111)), procs.logs()
    assert all(r["attempt"] == 1 for r in delivered(client))
