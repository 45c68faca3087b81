"""Worker throughput: batches per second one worker process runs, against RQ's own floor.

Baseline in the same run: a plain RQ job doing the same handler work (one INCRBY), enqueued with
the same options and run by the same worker class (`SimpleWorker`, JSON serializer). The ratio
says what distbatch adds per batch (claim, lease, complete) on top of what RQ costs per job.
Rounds alternate between the two sides; each figure is the median.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from distbatch import Batcher
from distbatch.worker import run_worker

from .common import private_redis, save, table

COUNT = 10


def _distbatch_round(url: str, jobs: int) -> float:
    producer = Batcher.from_url(url, namespace="wb")
    producer.register("wb", version="v1", source="src", handler="bench.handlers.count",
                      batch={"count": COUNT, "window": "1h"})
    producer.emit_many("src", [{"i": i} for i in range(jobs * COUNT)])  # cuts and enqueues `jobs`
    t0 = time.perf_counter()
    run_worker(Batcher.from_url(url, namespace="wb"), handlers=["bench.handlers"], burst=True)
    return jobs / (time.perf_counter() - t0)


def _rq_round(url: str, jobs: int) -> float:
    client = redis.Redis.from_url(url)
    queue = Queue("rq-floor", connection=client, serializer=JSONSerializer)
    queue.enqueue_many([Queue.prepare_data("bench.handlers.rq_count", args=(COUNT,), timeout=-1,
                                           result_ttl=0, failure_ttl=86_400) for _ in range(jobs)])
    t0 = time.perf_counter()
    SimpleWorker([queue], connection=client, serializer=JSONSerializer).work(
        burst=True, logging_level="WARNING")
    return jobs / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict[str, Any]:
    jobs, rounds = (100, 1) if quick else (500, 7)
    ours: list[float] = []
    floor: list[float] = []
    with private_redis() as server:
        os.environ["DISTBATCH_REDIS_URL"] = server.url  # the handlers' own connection
        client = redis.Redis.from_url(server.url)
        for _ in range(rounds):
            ours.append(_distbatch_round(server.url, jobs))
            floor.append(_rq_round(server.url, jobs))
        delivered = int(client.get("bench:events") or 0)
    expected = 2 * rounds * jobs * COUNT
    if delivered != expected:
        raise RuntimeError(f"handlers counted {delivered} events, expected {expected}")
    rows = [{"side": side, "batches_per_s": statistics.median(v), "ms_per_batch": 1000 / statistics.median(v)}
            for side, v in (("distbatch batch (claim, lease, handler, complete)", ours),
                            ("plain RQ job, same handler work (baseline)", floor))]
    ratio = statistics.median(o / f for o, f in zip(ours, floor, strict=True))
    print(f"one SimpleWorker process, {jobs} jobs per round, median of {rounds} alternating rounds")
    print(table(rows, ["side", "batches_per_s", "ms_per_batch"]))
    print(f"distbatch / plain RQ = {ratio:.2f} (median of the per-round ratios)")
    result = {"jobs": jobs, "rounds": rounds, "rows": rows, "ratio": ratio}
    save("worker", result, quick)
    return result


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
