"""What `emit_many` leaves for the caller's cyclic garbage collector.

An object per event that lives through a call's round trip is in the young generations whenever
the collector runs, gets promoted, and sets off full collections of the caller's whole heap: in
`bench ingest` that was ~0.8 µs of a ~3 µs per-event cost, in a process holding 50k payloads.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest

from distbatch import Batcher
from tests.redis_server import RedisServer


@pytest.mark.parametrize(("shards", "bindings"), [(1, 1), (3, 1), (1, 2), (3, 2)])
def test_emit_many_keeps_no_object_per_event_alive_through_its_round_trip(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, shards: int, bindings: int) -> None:
    b = Batcher.from_url(redis_server.url, namespace=f"gc-pressure-{shards}-{bindings}", shards=shards)
    for n in range(bindings):
        b.register(f"g{n}", version="v1", source="s", handler="m.h",
                   batch={"count": 100, "window": "1h", "key": "k"})
    payloads = [{"k": str(i % 50), "i": i} for i in range(1000)]
    b.emit_many("s", payloads[:10])  # registry, scripts and member cache are warm
    live: list[int] = []
    base = 0
    real = b.transport.run

    def run(*args: Any, **kwargs: Any) -> Any:
        live.append(gc.get_count()[0] - base)  # tracked objects made since the call began, still alive
        return real(*args, **kwargs)

    monkeypatch.setattr(b.transport, "run", run)
    gc.collect()
    gc.disable()  # no collection resets the count meanwhile
    try:
        base = gc.get_count()[0]
        results = b.emit_many("s", payloads)
    finally:
        gc.enable()
    assert [r.event for r in results] == [i for i in range(1000) for _ in range(bindings)]
    assert [r.binding for r in results[:2 * bindings]] == [f"g{n}@v1" for n in range(bindings)] * 2
    assert [r.partition_key for r in results[: 3 * bindings : bindings]] == ["0", "1", "2"]
    assert len(live) == bindings and max(live) < 100, live  # a few lists and closures, not one per item
