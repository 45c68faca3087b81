"""Handlers the benchmark workers run (started with --handlers bench.handlers)."""

from __future__ import annotations

import os
import time
from functools import cache
from typing import TextIO

import redis

from distbatch import Batch


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("BENCH_RECORD_URL") or os.environ["DISTBATCH_REDIS_URL"])


def record(batch: Batch) -> None:
    """The same work the celery-batches side does: count the events, keep their ids."""
    pipe = _client().pipeline(transaction=False)
    pipe.rpush("bench:ids", *(e.payload["id"] for e in batch.events))
    pipe.incrby("bench:events", len(batch.events))
    pipe.execute()


def lateness(batch: Batch) -> None:
    """For the expiry benchmark: when was it cut and started, against its deadline."""
    start_ms = time.time() * 1000
    window_ms = batch.events[0].payload["window_ms"]
    deadline = batch.events[0].payload["opened_ms"] + window_ms
    pipe = _client().pipeline(transaction=False)
    pipe.rpush("bench:late", f"{batch.cut_at_ms - deadline:.3f} {start_ms - deadline:.3f}")
    pipe.incrby("bench:events", len(batch.events))
    pipe.execute()


def count(batch: Batch) -> None:
    """For the worker benchmark: the least a handler does, one INCRBY."""
    _client().incrby("bench:events", len(batch.events))


@cache
def _starts() -> TextIO:
    return open(os.environ["BENCH_STARTS_FILE"], "a", buffering=1)


def started(batch: Batch) -> None:
    """For the worker benchmark's latency part: `count`'s work (one INCRBY) and, first, the batch's
    number, cut and start times as a line of a local file (a write, no round trip), so a run at 80% of the
    capacity measured with `count` does the same work per batch as that measure."""
    start_ms = time.time() * 1000
    _starts().write(f"{batch.events[0].payload['i']} {batch.cut_at_ms} {start_ms:.3f}\n")
    _client().incrby("bench:events", len(batch.events))


def rq_count(n: int) -> None:
    """The same work as a plain RQ job: the worker benchmark's baseline."""
    _client().incrby("bench:events", n)
