"""One sweeper pass with a backlog of ready batches waiting for workers.

The old hand-off looked up every due batch's RQ job with LPOS over the queue list, so a pass was
O(backlog^2) and took seconds at 40k queued batches — exactly when workers fell behind. Now a
pass is a fixed handful of O(log N) calls whatever the backlog: this measures a pass at 2k and
20k ready batches (with expired leases to reclaim in both) against the floor of the same number
of bare round trips (PING) in the same run.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from distbatch import Batcher
from distbatch.sweeper import Sweeper

from .common import private_redis, save, table

RECLAIMS = 20


def _fill(batcher: Batcher, n: int) -> None:
    batcher.register("sw", version="v1", source="src", handler="bench.handlers.count",
                     batch={"count": 1, "window": "1h"})
    for start in range(0, n, 1000):
        batcher.emit_many("src", [{"i": i} for i in range(start, min(n, start + 1000))])


def _pass_ms(batcher: Batcher, sweeper: Sweeper, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        for _ in range(RECLAIMS):  # workers that died holding a batch: their leases have run out
            claim = batcher.records.claim_next(-1)
            assert claim is not None
        t0 = time.perf_counter()
        sweeper.run_once()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _floor_ms(batcher: Batcher, trips: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(trips):
            batcher.client.ping()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def run(quick: bool = False) -> dict[str, Any]:
    sizes, rounds = ((200, 2000), 3) if quick else ((2000, 20000), 15)
    logging.getLogger("distbatch").setLevel(logging.ERROR)  # every pass reclaims on purpose
    rows = []
    with private_redis() as server:
        for n in sizes:
            batcher = Batcher.from_url(server.url, namespace=f"sw{n}", handoff=False)
            _fill(batcher, n)
            sweeper = Sweeper(batcher)
            sweeper.dispatcher.max_queued_jobs = 0  # measure the sweep, not RQ's enqueue
            ms = _pass_ms(batcher, sweeper, rounds)
            floor = _floor_ms(batcher, 4, rounds)  # a pass is 4 round trips + 1 per reclaim
            floor_r = _floor_ms(batcher, 4 + RECLAIMS, rounds)
            rows.append({"ready_batches": n, "reclaims_per_pass": RECLAIMS, "pass_ms": ms,
                         "per_batch_us": ms * 1000 / n, "floor_ms": floor_r, "pass/floor": ms / floor_r,
                         "floor_4_trips_ms": floor})
    ratio = rows[1]["per_batch_us"] / rows[0]["per_batch_us"]
    growth = rows[1]["pass_ms"] / rows[0]["pass_ms"]
    print(f"one sweeper pass, median of {rounds}; floor = the same number of PING round trips")
    print(table(rows, ["ready_batches", "reclaims_per_pass", "pass_ms", "per_batch_us", "floor_ms",
                       "pass/floor"]))
    print(f"pass time {sizes[1]} vs {sizes[0]} ready: {growth:.2f}x; per-batch cost ratio {ratio:.2f} "
          "(goal <= 2)")
    result = {"rounds": rounds, "rows": rows, "pass_growth": growth, "per_batch_ratio": ratio}
    save("sweeper", result, quick)
    return result


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
