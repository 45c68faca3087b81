"""The celery-batches baseline: one task per event, batched on the worker (flush_every=100).

celery-batches acks a message when it is buffered (not when its batch is handled), and needs the
prefetch limit at or above flush_every, so prefetching is unlimited here (its documented setup).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import redis
from celery import Celery
from celery_batches import Batches

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json", accept_content=["json"], worker_prefetch_multiplier=0,
    task_default_queue="bench-celery", task_ignore_result=True, broker_connection_retry_on_startup=True,
)


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@app.task(base=Batches, flush_every=100, flush_interval=0.2)
def handle(requests: list[Any]) -> None:
    """Same work as bench.handlers.record: count the events, keep their ids."""
    ids = [r.args[0]["id"] for r in requests]
    pipe = _client().pipeline(transaction=False)
    pipe.rpush("bench:ids", *ids)
    pipe.incrby("bench:events", len(ids))
    pipe.execute()
