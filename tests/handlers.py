"""Handlers the tests register; worker processes import them (allowlisted as tests.handlers).

They report to the Redis named by DISTBATCH_REDIS_URL, under `test:` keys, so a test can check
from outside what every worker process delivered.
"""

from __future__ import annotations

import json
import os
import time
from functools import cache

import redis

from distbatch import Batch

DELIVERED = "test:delivered"


@cache
def client() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("TEST_RECORD_URL") or os.environ["DISTBATCH_REDIS_URL"])


def describe(batch: Batch) -> str:
    return json.dumps({
        "id": batch.id, "binding": batch.binding, "partition_key": batch.partition_key,
        "reason": batch.reason, "attempt": batch.attempt, "pid": os.getpid(),
        "events": [e.id for e in batch.events], "payloads": [e.payload for e in batch.events],
        "start_ms": int(time.time() * 1000), "cut_ms": batch.cut_at_ms,
    })


def noop(batch: Batch) -> None:
    """For bindings no worker runs in the test."""


def record(batch: Batch) -> None:
    client().rpush(DELIVERED, describe(batch))


def slow_record(batch: Batch) -> None:
    """Marks itself in flight first, so a test can kill -9 the worker mid-handler."""
    client().set(f"test:inflight:{os.getpid()}", batch.id)
    time.sleep(float(os.environ.get("TEST_HANDLER_SLEEP", "0.3")))
    record(batch)
    client().delete(f"test:inflight:{os.getpid()}")


def sleep_if_asked(batch: Batch) -> None:
    """Sleeps as long as an event's `sleep` says (marked in flight meanwhile), then records."""
    pause = max(float(e.payload.get("sleep", 0)) for e in batch.events)
    if pause:
        client().set(f"test:inflight:{os.getpid()}", batch.id)
        time.sleep(pause)
    record(batch)


def flaky(batch: Batch) -> None:
    """Fails on the first two tries, then succeeds."""
    if client().incr(f"test:tries:{batch.id}") < 3:
        raise RuntimeError(f"flaky failure on attempt {batch.attempt}")
    record(batch)


def broken_until_fixed(batch: Batch) -> None:
    client().incr(f"test:tries:{batch.id}")
    if not client().get("test:fixed"):
        raise ValueError("handler is broken")
    record(batch)


def boom(batch: Batch) -> None:
    """Always fails (a dead batch for the dashboard test)."""
    raise ValueError(f"card processor rejected batch {batch.id}: THE BOOM LINE")


def hang_first(batch: Batch) -> None:
    """Hangs on its first try (marked in flight first), swallowing what an `except Exception`
    swallows; records on a later try."""
    if batch.attempt == 1:
        client().set(f"test:inflight:{os.getpid()}", batch.id)
        try:  # noqa: SIM105 - the catch-all as handlers write it
            time.sleep(3600)
        except Exception:  # a handler's own catch-all must not keep it hung
            pass
        return
    record(batch)
