"""Client-side cost of emit_many per event, without Redis: encoding (with the decode check when it
runs) and planning (partition key, member, shard). `timeit`, best of 5 repeats of 20 calls of
1,000 events; baseline in the same run: a bare `msgpack.packb` of the same payloads."""

from __future__ import annotations

import itertools
import timeit
from typing import Any

import fakeredis
import msgpack

from distbatch import Batcher, codec

from .common import payload, save, table


def _per_event_us(fn: Any, n: int) -> float:
    return min(timeit.repeat(fn, number=20, repeat=5)) / 20 / n * 1e6


def run(quick: bool = False) -> dict[str, Any]:
    b = Batcher(fakeredis.FakeRedis(), namespace="client", handoff=False)
    b.register("c", version="v1", source="src", handler="m.h",
               batch={"count": 100, "window": "1h", "key": "k"})
    routes = b.run(b.registry.load()).routes["src"]
    events = [payload(i, 1000) for i in range(1000)]
    tupled = [{**e, "labels": tuple(e["labels"])} for e in events]  # a tuple: the decode check runs

    def encode(ps: list[dict[str, Any]]) -> None:  # what emit_many does
        codec.begin()
        data = codec.encode_events(itertools.count(), "x", "src", 1, ps, 1 << 20)
        if codec.unusual():
            codec.check_round_trip(data, ps)

    rows = [
        {"step": "msgpack.packb alone (baseline)", "us_per_event": _per_event_us(
            lambda: [msgpack.packb(p) for p in events], len(events))},
        {"step": "encode, JSON-like payloads (no decode check)",
         "us_per_event": _per_event_us(lambda: encode(events), len(events))},
        {"step": "encode, payloads holding a tuple (decode check)",
         "us_per_event": _per_event_us(lambda: encode(tupled), len(events))},
        {"step": "plan: partition key, member, shard",
         "us_per_event": _per_event_us(lambda: b.core.plan(routes, events), len(events))},
    ]
    print("client-side µs per event of emit_many (no Redis)")
    print(table(rows, ["step", "us_per_event"]))
    result = {"rows": rows}
    save("client", result, quick)
    return result


if __name__ == "__main__":
    run()
