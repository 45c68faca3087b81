"""Async emit: 1,000 concurrent `await emit(...)` tasks in one process (coalesced, the default, and
with `coalesce=False`: one script call per emit), against the sync single `emit` rate and
`emit_many(1000)` of the same events in the same run (same Redis, same payloads).

Rounds alternate the three; figures are medians of events/s."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from distbatch import Batcher
from distbatch.aio import AsyncBatcher

from .common import payload, private_redis, save, table

KEYS, COUNT, TASKS = 1000, 100, 1000


def _sync_emit(b: Batcher, events: list[dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    for e in events:
        b.emit("src", e)
    return len(events) / (time.perf_counter() - t0)


def _sync_many(b: Batcher, events: list[dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(events), 1000):
        b.emit_many("src", events[start : start + 1000])
    return len(events) / (time.perf_counter() - t0)


async def _async_emit(b: AsyncBatcher, events: list[dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(events), TASKS):  # TASKS emits in flight at once
        await asyncio.gather(*(b.emit("src", e) for e in events[start : start + TASKS]))
    return len(events) / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict[str, Any]:
    n, rounds = (2_000, 1) if quick else (20_000, 5)
    events = [payload(i, KEYS) for i in range(n)]
    rates: dict[str, list[float]] = {"sync emit": [], "async emit, 1000 tasks": [],
                                     "async emit, 1000 tasks, coalesce=False": [], "sync emit_many(1000)": []}
    with private_redis() as server:
        sync = Batcher.from_url(server.url, namespace="aio", handoff=False)
        sync.register("a", version="v1", source="src", handler="bench.handlers.record",
                      batch={"count": COUNT, "window": "1h", "key": "k"})
        loop = asyncio.new_event_loop()
        ab = loop.run_until_complete(AsyncBatcher.from_url(server.url, namespace="aio", handoff=False))
        plain = loop.run_until_complete(AsyncBatcher.from_url(server.url, namespace="aio", handoff=False,
                                                              coalesce=False))
        loop.run_until_complete(ab.emit("src", events[0]))
        loop.run_until_complete(plain.emit("src", events[0]))
        sync.emit("src", events[0])
        for _ in range(rounds):
            rates["sync emit"].append(_sync_emit(sync, events))
            rates["async emit, 1000 tasks"].append(loop.run_until_complete(_async_emit(ab, events)))
            rates["async emit, 1000 tasks, coalesce=False"].append(
                loop.run_until_complete(_async_emit(plain, events)))
            rates["sync emit_many(1000)"].append(_sync_many(sync, events))
        loop.run_until_complete(ab.aclose())
        loop.run_until_complete(plain.aclose())
        loop.close()
    base = rates["sync emit"]
    rows = [{"path": k, "events_s": statistics.median(v),
             "vs_sync_emit": statistics.median(x / y for x, y in zip(v, base, strict=True))}
            for k, v in rates.items()]
    print(f"{n} events per round, median of {rounds} alternating rounds; one process, one Redis")
    print(table(rows, ["path", "events_s", "vs_sync_emit"]))
    result = {"events": n, "rounds": rounds, "rows": rows}
    save("aio", result, quick)
    return result


if __name__ == "__main__":
    run()
