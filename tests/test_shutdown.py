"""Stopping the long-running processes, in real processes: a signal at any moment ends them
promptly and cleanly, and the batch in hand finishes, whatever Redis is doing meanwhile."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from distbatch import Batcher
from distbatch.testing import RedisServer

from .processes import Procs, delivered, wait_for
from .test_distributed import NS


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """For `procs` and `client`: restarted by some tests (it keeps its data), paused by one."""
    s = RedisServer(appendonly=True).start()
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.proc.send_signal(signal.SIGCONT)
    s.cleanup()


@pytest.fixture
def procs(server: RedisServer, tmp_path: Path) -> Iterator[Procs]:
    with Procs(server.url, NS, tmp_path) as p:
        yield p


@pytest.fixture
def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def _slow(server: RedisServer, **retry: object) -> Batcher:
    b = Batcher.from_url(server.url, namespace=NS)
    b.register("slow", version="v1", source="s", handler="tests.handlers.slow_record",
               batch={"count": 1, "window": "1h"}, retry=retry or None)
    return b


def test_sigterm_while_a_refused_jobs_drain_runs_a_handler_lets_it_finish(
        server: RedisServer, procs: Procs, client: redis.Redis) -> None:
    """After refusing a planted job the worker drains what is ready, while RQ's state says idle:
    RQ's handler raised StopRequested inside the user's handler, which failed (a try spent; with
    one attempt the batch went dead)."""
    b = Batcher(redis.Redis.from_url(server.url), namespace=NS, handoff=False)
    b.register("slow", version="v1", source="s", handler="tests.handlers.slow_record",
               batch={"count": 1, "window": "1h"}, retry={"attempts": 1})
    b.emit("s", {"n": 1})  # ready, and no ticket for it
    Queue(b.keys.queue_name, connection=client, serializer=JSONSerializer).enqueue("os.getcwd")
    w = procs.worker(env={"TEST_HANDLER_SLEEP": "2"})
    wait_for(lambda: client.get(f"test:inflight:{w.pid}") is not None, 30, "the handler", procs.logs)
    w.send_signal(signal.SIGTERM)
    assert w.wait(30) == 0, procs.logs()
    assert [r["attempt"] for r in delivered(client)] == [1], procs.logs()
    assert client.zcard(b.keys.dead) == 0 and "StopRequested" not in procs.logs()


def test_sigterm_while_redis_is_briefly_away_lets_the_handler_finish(
        server: RedisServer, procs: Procs, client: redis.Redis) -> None:
    """RQ's handler wrote to Redis from inside the user's handler: with Redis away for half a
    second its ConnectionError was raised there, and the batch waited out its lease."""
    _slow(server)
    w = procs.worker(env={"TEST_HANDLER_SLEEP": "3"})
    b = Batcher.from_url(server.url, namespace=NS)
    b.emit("s", {"n": 1})
    wait_for(lambda: client.get(f"test:inflight:{w.pid}") is not None, 30, "the handler", procs.logs)
    server.stop()
    w.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    server.start()
    assert w.wait(30) == 0, procs.logs()
    client = redis.Redis.from_url(server.url)
    assert [r["attempt"] for r in delivered(client)] == [1], procs.logs()
    assert client.zcard(b.keys.running) == 0 and "ConnectionError" not in procs.logs().split(
        "warm shut down")[-1]


def test_sigterm_while_the_worker_waits_for_redis_to_come_back_exits_cleanly(
        server: RedisServer, procs: Procs, client: redis.Redis) -> None:
    """Redis went away under a handler, so RQ's loop quit and the worker waits to start it again.
    RQ's handler, still installed, then wrote to the Redis that was away: `Error: cannot reach
    Redis`, exit 1."""
    b = _slow(server)
    w = procs.worker(env={"TEST_HANDLER_SLEEP": "1.5"})
    b.emit("s", {"n": 1})
    wait_for(lambda: client.get(f"test:inflight:{w.pid}") is not None, 30, "the handler", procs.logs)
    server.stop()
    wait_for(lambda: "worker_restarting" in procs.logs() or "worker_redis_unavailable" in procs.logs(),
             30, "RQ's loop to quit", procs.logs)
    w.send_signal(signal.SIGTERM)
    assert w.wait(15) == 0, procs.logs()
    assert "Error:" not in procs.logs()


def test_restarts_of_rqs_loop_leave_no_subscription_behind(
        server: RedisServer, procs: Procs, client: redis.Redis) -> None:
    """Each restart of RQ's loop (Redis went away under a handler) left its pub/sub thread
    running, which subscribed again once Redis was back: one more subscriber per restart."""
    b = _slow(server)
    w = procs.worker("--name", "w1", env={"TEST_HANDLER_SLEEP": "1"})
    channel = "rq:pubsub:w1"
    for n in range(1, 3):
        client = redis.Redis.from_url(server.url)
        wait_for(lambda c=client: c.pubsub_numsub(channel)[0][1] >= 1, 30, "the worker", procs.logs)
        b.emit("s", {"n": n})
        wait_for(lambda c=client: c.get(f"test:inflight:{w.pid}") is not None, 30, "the handler",
                 procs.logs)
        server.stop()
        wait_for(lambda n=n: procs.logs().count("worker_restarting") >= n, 30, "RQ's loop to quit",
                 procs.logs)
        server.start()
    client = redis.Redis.from_url(server.url)
    wait_for(lambda: client.pubsub_numsub(channel)[0][1] >= 1, 30, "the worker back", procs.logs)
    time.sleep(3)  # a leaked thread reconnects within 2 s
    assert client.pubsub_numsub(channel) == [(channel.encode(), 1)], procs.logs()


def test_a_clean_stop_takes_its_heartbeat_and_its_sweepers_lease_with_it(
        server: RedisServer, procs: Procs, client: redis.Redis) -> None:
    """Daemon threads died with the process before removing their entries: /healthz counted the
    stopped worker and its sweeper for up to a minute."""
    b = _slow(server)
    w = procs.worker("--with-sweeper")
    wait_for(lambda: client.zcard(b.keys.workers) == 1 and client.zcard(b.keys.sweepers) == 1, 30,
             "the heartbeats", procs.logs)
    w.send_signal(signal.SIGTERM)
    assert w.wait(15) == 0, procs.logs()
    assert client.zcard(b.keys.workers) == 0 and client.zcard(b.keys.sweepers) == 0, procs.logs()
    assert "Traceback" not in procs.logs()  # the pub/sub thread, closed under its read, said so


def test_a_second_signal_ends_a_sweeper_whose_redis_hangs(
        server: RedisServer, procs: Procs, client: redis.Redis) -> None:
    """Every step of a stop waits out the socket timeout on a Redis that hangs, and further
    signals were dropped: 21 signals, 21 s."""
    _slow(server)
    sw = procs.sweeper()
    b = Batcher.from_url(server.url, namespace=NS)
    wait_for(lambda: client.zcard(b.keys.sweepers) == 1, 30, "the sweeper", procs.logs)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.5)
        sw.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        started = time.monotonic()
        sw.send_signal(signal.SIGTERM)
        assert sw.wait(5) == 128 + signal.SIGTERM and time.monotonic() - started < 3
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert "exits now" in procs.logs()


@pytest.mark.parametrize("busy", [False, True])
def test_one_sigterm_ends_a_worker_whose_redis_hangs_within_a_grace(
        server: RedisServer, procs: Procs, client: redis.Redis, busy: bool) -> None:
    """RQ's bookkeeping after the batch in hand and its `register_death` waited out RQ's 415 s
    socket timeout each on a Redis that hangs: compose's 60 s grace ended in SIGKILL, every time.
    Once stopping, each call waits the batcher's own timeout at most; the batch in hand, if its
    complete could not reach Redis, comes back when its lease runs out."""
    import rq

    if busy and int(rq.__version__.split(".")[0]) < 3:
        pytest.skip("RQ 2's job bookkeeping after a job does not use the worker's connections: "
                    "only a second signal bounds that stop there")
    b = _slow(server)
    # the handler's own client waits 2 s at most: one without a timeout hangs the handler itself
    # on a Redis that hangs, and no stop of the worker's can end a handler that has not returned
    w = procs.worker(env={"TEST_HANDLER_SLEEP": "1.5", "TEST_RECORD_URL": f"{server.url}?socket_timeout=2"})
    wait_for(lambda: "Listening on" in procs.logs() or client.keys("rq:worker:*"), 30, "the worker",
             procs.logs)
    if busy:
        b.emit("s", {"n": 1})
        wait_for(lambda: client.get(f"test:inflight:{w.pid}") is not None, 30, "the handler", procs.logs)
    else:
        time.sleep(1.0)  # in RQ's blocking dequeue
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        w.send_signal(signal.SIGTERM)
        try:
            code = w.wait(58)
        except Exception:
            w.kill()
            raise AssertionError(f"still running 58 s after SIGTERM:\n{procs.logs()[-3000:]}") from None
        took = time.monotonic() - started
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert code == 0 and took < 55, (code, took, procs.logs()[-3000:])  # within compose's 60 s


def test_a_second_worker_of_the_same_name_waits_and_takes_nothing_from_the_live_one(
        server: RedisServer, procs: Procs, client: redis.Redis) -> None:
    """The retry meant for this process's own registration, left while Redis was away, tore down
    whatever held the name: a second `--name w1` wrote the live worker's death and took its place
    (`rq info` lost it; its heartbeat id went with the second one's stop). Now it waits, saying
    who holds the name, and starts once the name is free."""
    _slow(server)
    first = procs.worker("--name", "w1")
    wait_for(lambda: client.hget("rq:worker:w1", "pid") == str(first.pid).encode(), 30, "the first",
             procs.logs)
    second = procs.worker("--name", "w1")
    wait_for(lambda: "worker_name_taken" in procs.logs(), 30, "the second to say so", procs.logs)
    time.sleep(2.0)  # several of its retries
    assert client.hget("rq:worker:w1", "pid") == str(first.pid).encode(), procs.logs()
    assert client.hget("rq:worker:w1", "death") is None, procs.logs()
    assert f"pid {first.pid}" in procs.logs()
    first.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    wait_for(lambda: client.hget("rq:worker:w1", "pid") == str(second.pid).encode(), 30,
             "the second to start once the name is free", procs.logs)
    # its lines in order: it waited, then started (it said `worker_started` first, and nothing
    # once it took the name, its last line "waiting")
    log = procs.logdir / f"worker-{procs.procs.index(second)}.log"
    wait_for(lambda: "worker_started" in log.read_text(), 10, "the second to say it started", procs.logs)
    said = log.read_text()
    assert said.index("worker_name_taken") < said.index("worker_started")
    assert said.count("worker_started") == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_worker_waits_for_redis_at_start_is_a_clean_stop(
        procs: Procs, signum: signal.Signals) -> None:
    """It died by the signal (SIGTERM: status -15) or printed click's "Aborted!" (SIGINT: 1),
    where the sweeper stops cleanly: an orchestrator read an ordinary stop as a crash. With its
    metrics port up, so a signal cannot land on the metrics thread either."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    w = procs.spawn("-m", "distbatch.cli", "worker", "--redis-url", f"redis://127.0.0.1:{ports[0]}/0",
                    "--namespace", NS, "--handlers", "tests.handlers", "--metrics-port", str(ports[1]),
                    "--metrics-insecure-no-auth", name="worker")
    wait_for(lambda: "redis_unavailable" in procs.logs(), 30, "the wait for Redis", procs.logs)
    w.send_signal(signum)
    assert w.wait(10) == 0, procs.logs()
    assert "Aborted" not in procs.logs() and "Traceback" not in procs.logs()


def test_a_second_signal_exits_the_worker_now_with_the_signals_status_and_the_batch_comes_back(
        server: RedisServer, procs: Procs, client: redis.Redis) -> None:
    """RQ's cold shutdown raised SystemExit inside the running handler; RQ's job runner caught it:
    a traceback in the user's handler, then exit status 0, as if the batch had finished."""
    b = _slow(server)
    w = procs.worker("--lease", "2s", env={"TEST_HANDLER_SLEEP": "5"})
    b.emit("s", {"n": 1})
    wait_for(lambda: client.get(f"test:inflight:{w.pid}") is not None, 30, "the handler", procs.logs)
    w.send_signal(signal.SIGTERM)
    time.sleep(1.3)  # RQ's rule: a second signal within 1 s is the same stop sent twice
    started = time.monotonic()
    w.send_signal(signal.SIGTERM)
    assert w.wait(5) == 128 + signal.SIGTERM and time.monotonic() - started < 2, procs.logs()
    assert "the worker exits now" in procs.logs() and "Traceback" not in procs.logs(), procs.logs()
    assert delivered(client) == []
    procs.worker(env={"TEST_HANDLER_SLEEP": "0"})  # the batch comes back once its lease runs out
    procs.sweeper()  # (a sweeper reclaims it)
    wait_for(lambda: len(delivered(client)) == 1, 30, "the batch run again", procs.logs)
    assert delivered(client)[0]["attempt"] == 2


def test_rqs_long_socket_timeout_stays_on_rqs_own_connections(server: RedisServer) -> None:
    """RQ raises the socket timeout of the pool it is given to 415 s; on the batcher's pool every
    lease renewal, heartbeat and sweep then waited that long on a Redis that hangs."""
    from distbatch.handlers import HandlerResolver
    from distbatch.worker import configure, make_worker

    b = Batcher.from_url(server.url, namespace=NS)
    before = b.client.connection_pool.connection_kwargs.get("socket_timeout")
    worker = make_worker(b, configure(b, HandlerResolver()))
    assert worker.connection.connection_pool.connection_kwargs["socket_timeout"] >= 400
    assert b.client.connection_pool.connection_kwargs.get("socket_timeout") == before
    assert worker.connection.ping()


@pytest.mark.parametrize("refusal", ["out_of_memory", "read_only"])
def test_a_worker_rides_out_redis_refusing_writes_and_delivers_after(
        server: RedisServer, procs: Procs, client: redis.Redis, refusal: str) -> None:
    """Redis out of memory (or demoted to a replica by a failover) for a few seconds: RQ's loop
    quit, and its restart failed on its own registration (`OutOfMemoryError` / `ReadOnlyError`,
    both `ResponseError`s): the worker exited for good, and batches waited for a person."""
    b = _slow(server)
    w = procs.worker(env={"TEST_HANDLER_SLEEP": "0"})
    wait_for(lambda: client.zcard(b.keys.workers) == 1, 30, "the worker", procs.logs)
    b.emit("s", {"n": 1})
    wait_for(lambda: len(delivered(client)) == 1, 30, "the first batch", procs.logs)
    if refusal == "out_of_memory":
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")
    else:
        client.execute_command("REPLICAOF", "127.0.0.1", "1")  # nobody there: read-only, for good
    try:
        wait_for(lambda: "worker_redis_unavailable" in procs.logs(), 30, "the worker to meet it",
                 procs.logs)
        time.sleep(1)
        assert w.poll() is None, procs.logs()
    finally:
        if refusal == "out_of_memory":
            client.config_set("maxmemory", "0")
        else:
            client.execute_command("REPLICAOF", "NO", "ONE")
    b.emit("s", {"n": 2})
    wait_for(lambda: len(delivered(client)) == 2, 30, "the batch after", procs.logs)
    assert w.poll() is None, procs.logs()


def test_an_idle_worker_is_back_within_seconds_of_redis(
        server: RedisServer, procs: Procs, client: redis.Redis) -> None:
    """RQ's dequeue loop retries a Redis that is away after 1 s doubling up to 60 s: after an
    outage of 10 s its next try came 5 s after Redis was back, after 40 s some 22 s later."""
    b = _slow(server)
    w = procs.worker(env={"TEST_HANDLER_SLEEP": "0"})
    wait_for(lambda: client.zcard(b.keys.workers) == 1, 30, "the worker", procs.logs)
    time.sleep(0.5)  # idle in RQ's dequeue
    server.stop()
    time.sleep(10)
    server.start()
    client = redis.Redis.from_url(server.url)
    b.emit("s", {"n": 1})
    started = time.monotonic()
    wait_for(lambda: len(delivered(client)) == 1, 30, "the batch", procs.logs)
    assert time.monotonic() - started < 3.5, procs.logs()
    assert w.poll() is None
    # one line per retry of the dequeue (every 2 s at most); RQ's pub/sub thread said "could not
    # connect ... retrying in 2 seconds" every 2 s besides: now once
    assert procs.logs().count("worker_pubsub_unavailable") == 1, procs.logs()
    assert procs.logs().count("could not connect to Redis instance") <= 7, procs.logs()


def test_rqs_remote_commands_are_said_and_a_garbled_one_is_ignored(
        server: RedisServer, procs: Procs, client: redis.Redis) -> None:
    """Anyone who can PUBLISH on the Redis stopped a worker with `{"command": "shutdown"}`: exit 0
    and not a word (RQ says so at INFO); a message that was no JSON killed its pub/sub thread."""
    w = procs.worker("--name", "cmdw")
    channel = "rq:pubsub:cmdw"
    wait_for(lambda: client.pubsub_numsub(channel)[0][1] >= 1, 30, "the worker", procs.logs)
    client.publish(channel, b"\xff not json")
    wait_for(lambda: "worker_command_ignored" in procs.logs(), 10, "the garbled message said", procs.logs)
    time.sleep(0.5)
    assert w.poll() is None and client.pubsub_numsub(channel)[0][1] == 1  # still listening
    client.publish(channel, '{"command": "shutdown"}')
    assert w.wait(30) == 0
    assert "worker_command command=shutdown" in procs.logs()
    assert "worker_stopping: the batch in hand finishes" in procs.logs()  # the first signal, said
