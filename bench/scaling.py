"""Cost versus open partitions: emit and flush_expired (nothing expired) with 1k … 1M open buffers.

Baseline in the same run: the 1k figure. Goal: the 1M figure ≤ 1.2× the 1k figure, i.e. nothing
scans all buffers.
"""

from __future__ import annotations

import random
import time
from typing import Any

import msgpack

from distbatch import Batcher

from .common import payload, private_redis, save, table
from .ingest import MINIMAL

SIZES = (1_000, 10_000, 100_000, 1_000_000)


def _populate(batcher: Batcher, start: int, stop: int) -> None:
    for lo in range(start, stop, 1000):
        chunk = range(lo, min(stop, lo + 1000))
        batcher.emit_many("src", [{**payload(i, stop), "k": f"p{i}"} for i in chunk])


def _server_us(client: Any) -> float:
    """Time Redis spent in scripts so far (commandstats), to split server from client cost."""
    return float(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


def _emit_cost(batcher: Batcher, open_keys: int, rounds: int) -> tuple[float, float, float]:
    """µs per event for emit_many(100) (all, and inside Redis) and for single emit."""
    rng = random.Random(open_keys)
    events = [{**payload(i, 1), "k": f"p{rng.randrange(open_keys)}"} for i in range(rounds * 100)]
    batcher.client.config_resetstat()
    t0 = time.perf_counter()
    for i in range(rounds):
        batcher.emit_many("src", events[i * 100 : (i + 1) * 100])
    many = (time.perf_counter() - t0) / len(events) * 1e6
    many_server = _server_us(batcher.client) / len(events)
    t0 = time.perf_counter()
    for e in events[: rounds * 5]:
        batcher.emit("src", e)
    single = (time.perf_counter() - t0) / (rounds * 5) * 1e6
    return many, many_server, single


def _raw_cost(batcher: Batcher, open_keys: int, rounds: int) -> tuple[float, float]:
    """The same appends as emit_many(100) through the minimal RPUSH + ZADD script (the ceiling)."""
    client = batcher.client
    script = client.register_script(MINIMAL)
    rng = random.Random(open_keys + 1)
    prefix, deadlines = batcher.keys.buffer_prefix, batcher.keys.deadlines
    items = [(f"{prefix}scale@v1|=p{rng.randrange(open_keys)}", msgpack.packb(payload(i, 1)))
             for i in range(rounds * 100)]
    client.config_resetstat()
    t0 = time.perf_counter()
    for i in range(rounds):
        pipe = client.pipeline(transaction=False)
        for key, data in items[i * 100 : (i + 1) * 100]:
            script(keys=[key, deadlines], args=[data, 1], client=pipe)
        pipe.execute()
    return (time.perf_counter() - t0) / len(items) * 1e6, _server_us(client) / len(items)


def _flush_cost(batcher: Batcher, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        assert not batcher.flush_step(500, with_events=False).batches
    return (time.perf_counter() - t0) / calls * 1e6


def run(quick: bool = False) -> dict[str, Any]:
    sizes = SIZES[:2] if quick else SIZES
    rounds, calls = (50, 300) if quick else (500, 2000)
    rows: list[dict[str, Any]] = []
    with private_redis() as server:
        batcher = Batcher.from_url(server.url, namespace="scale")
        batcher.register("scale", version="v1", source="src", handler="bench.handlers.record",
                         batch={"count": 1000, "window": "1d", "key": "k"})
        opened = 0
        for size in sizes:
            t0 = time.perf_counter()
            _populate(batcher, opened, size)
            opened = size
            fill = time.perf_counter() - t0
            assert batcher.client.zcard(batcher.keys.deadlines) == size
            time.sleep(2)  # let Redis finish rehashing its grown dicts before timing
            many, many_server, single = _emit_cost(batcher, size, rounds)
            raw, raw_server = _raw_cost(batcher, size, rounds)
            rows.append({"open_buffers": size, "emit_many_us_per_event": many,
                         "emit_many_redis_us_per_event": many_server, "emit_us_per_call": single,
                         "raw_us_per_event": raw, "raw_redis_us_per_event": raw_server,
                         "flush_us_per_call": _flush_cost(batcher, calls), "fill_s": fill})
    base = rows[0]
    for r in rows:
        for k in ("emit_many_us_per_event", "emit_us_per_call", "flush_us_per_call", "raw_us_per_event"):
            r[k.replace("_us_per_event", "").replace("_us_per_call", "") + "_vs_1k"] = r[k] / base[k]
        r["emit_many_client_us_per_event"] = r["emit_many_us_per_event"] - r["emit_many_redis_us_per_event"]
    shown = {"open_buffers": "open", "emit_many_us_per_event": "many_us", "emit_many_vs_1k": "many_x",
             "emit_many_redis_us_per_event": "many_redis", "emit_many_client_us_per_event": "many_client",
             "raw_us_per_event": "raw_us", "raw_vs_1k": "raw_x", "raw_redis_us_per_event": "raw_redis",
             "emit_us_per_call": "emit_us", "emit_vs_1k": "emit_x", "flush_us_per_call": "flush_us",
             "flush_vs_1k": "flush_x"}
    print("µs per event (emit_many, raw) or per call (emit, flush); _x = ratio to the 1k row")
    print(table([{shown[k]: r[k] for k in shown} for r in rows], list(shown.values())))
    result = {"rows": rows}
    save("scaling", result)
    return result


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
