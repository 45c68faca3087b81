"""Handlers that misbehave, run by real `distbatch worker` processes."""
# ruff: noqa: F811  # (the fixtures imported below are the tests' parameters)

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from distbatch import Batcher, dead

from .handlers import DELIVERED
from .processes import Procs, wait_for

# the real-process fixtures of the distributed tests: a private redis-server, its processes
from .test_distributed import NS, batcher, client, procs, server  # noqa: F401


def _worker(procs: Procs, lease: str = "1s"):
    return procs.spawn("-m", "distbatch.cli", "worker", "--redis-url", procs.url, "--namespace", NS,
                       "--handlers", "tests.misbehaving_handlers", "--lease", lease, name="worker")


def _rows(client: redis.Redis, key: str) -> list[dict]:
    return [json.loads(x) for x in client.lrange(key, 0, -1)]


def _quiet(client: redis.Redis, batcher: Batcher) -> bool:
    k = batcher.keys
    return client.zcard(k.ready) + client.zcard(k.running) + client.zcard(k.delayed) == 0


def test_handler_raising_systemexit_fails_its_batch_with_its_traceback(procs: Procs, client, batcher) -> None:
    """A handler that calls sys.exit (or raises KeyboardInterrupt, GeneratorExit, any
    BaseException but HandlerTimeout) is not failed: the batch sits in `running` until its lease
    runs out (`--lease`, up to a day), its retry backoff ignored, and goes dead with "lease
    expired: the worker ... stopped renewing (killed, paused or cut off from Redis)" instead of
    its traceback (README: "kept as a dead batch with its traceback")."""
    batcher.register("exits", version="v1", source="s", handler="tests.misbehaving_handlers.exits",
                     batch={"count": 1, "window": "1h"}, retry={"attempts": 1})
    batcher.emit("s", {"i": 0})
    _worker(procs, lease="30s")
    wait_for(lambda: client.llen("test:started") >= 1, 20, "the handler started", procs.logs)
    wait_for(lambda: client.zcard(batcher.keys.dead) == 1, 8,
             "the batch failed (dead: attempts=1) without waiting out its 30 s lease", procs.logs)
    (row,) = dead.rows(batcher)
    assert "SystemExit" in row["error"] and "handler gave up" in row["error"], row["error"]


def test_huge_exception_message_keeps_what_raised_in_the_dead_record(procs: Procs, client, batcher,
                                                                     tmp_path: Path) -> None:
    """An exception whose message is 1 MiB: the dead record keeps the last 4000 characters of
    the formatted traceback, all of them message: `dead show` says neither the exception's type
    nor where it was raised. The worker logs the whole message on every try (1 MiB a line)."""
    batcher.register("huge", version="v1", source="s", handler="tests.misbehaving_handlers.huge_message",
                     batch={"count": 1, "window": "1h"}, retry={"attempts": 1})
    batcher.emit("s", {"i": 0})
    _worker(procs)
    wait_for(lambda: client.zcard(batcher.keys.dead) == 1, 20, "the batch dead", procs.logs)
    (row,) = dead.rows(batcher)
    assert "HugeMessage" in row["error"] and "misbehaving_handlers.py" in row["error"], row["error"][:200]
    size = sum(f.stat().st_size for f in tmp_path.glob("worker-*.log"))
    assert size < 100_000, f"worker log is {size} bytes for one failed batch"


def test_exception_whose_str_raises_is_failed_without_breaking_the_drain(procs: Procs, client,
                                                                         batcher) -> None:
    """`str(exc)` raising (in `describe`, for the handler_failed log line, after the batch was
    failed): the drain aborts with distbatch's own traceback inside RQ (a failed RQ job), no
    handler_failed line is logged and the round's batches in hand are given back."""
    batcher.register("badstr", version="v1", source="s", handler="tests.misbehaving_handlers.bad_str",
                     batch={"count": 1, "window": "1h"}, retry={"attempts": 1})
    batcher.emit("s", {"i": 0})
    _worker(procs)
    wait_for(lambda: client.zcard(batcher.keys.dead) == 1, 20, "the batch dead", procs.logs)
    time.sleep(0.5)
    logs = procs.logs()
    assert "handler_failed" in logs and "str of BadStr failed" not in logs, logs


def test_a_batch_that_kills_its_worker_mid_round_goes_dead_and_none_of_its_round_does(
        procs: Procs, client, batcher) -> None:
    """A warm worker claims several batches at once. When one that is not first of the claim
    kills it (SIGKILL from inside the handler), the reclaim counted the try of the first of the
    claim, whose handler had returned: with `attempts: 1` that innocent batch went dead, while
    the killer ran again uncounted, killing a worker each time until it came first. Now every
    batch of the round comes back uncounted and runs alone: the killer goes dead after killing
    one more worker, and every other batch is delivered."""
    batcher.register("k", version="v1", source="s", handler="tests.misbehaving_handlers.kills_if_asked",
                     batch={"count": 1, "window": "1h"}, retry={"attempts": 1})
    workers = [_worker(procs)]
    procs.sweeper("--max-sleep", "200ms")
    batcher.emit_many("s", [{"n": i} for i in range(20)])  # fast handlers: the worker warms up
    wait_for(lambda: client.llen(DELIVERED) == 20, 30, "the warm-up", procs.logs)
    batcher.emit_many("s", [{"n": 100 + i, "kill": i == 5} for i in range(11)])
    deadline = time.monotonic() + 60
    while not (client.zcard(batcher.keys.dead) >= 1 and _quiet(client, batcher)):
        assert time.monotonic() < deadline, procs.logs()
        if workers[-1].poll() is not None:  # killed by the handler: an operator's restart
            assert len(workers) < 6, f"{len(workers)} workers killed\n{procs.logs()}"
            workers.append(_worker(procs))
        time.sleep(0.05)
    rows = dead.rows(batcher)
    payloads = [e["payload"] for r in rows for e in dead.detail(batcher, r["id"])["events"]]
    assert payloads == [{"n": 105, "kill": True}], rows
    (row,) = rows
    starts = [r for r in _rows(client, "test:started") if r["id"] == row["id"]]
    assert len(starts) == 2, starts  # in its round, then alone
    got = sorted(json.loads(r)["payloads"][0]["n"] for r in client.lrange(DELIVERED, 0, -1))
    assert sorted(set(got)) == [*range(20), *(100 + i for i in range(11) if i != 5)], procs.logs()
    assert len(workers) == 3, procs.logs()  # two killed: in the round, then alone
