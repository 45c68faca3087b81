"""Cost versus open partitions: emit and flush_expired (nothing expired) with 1k … 1M open buffers.

Baseline in the same run: the 1k figure, and for emit_many a raw ceiling doing the minimal Redis
work for the same events in one script call per chunk (its growth is what Redis itself does with
more keys). Goals: emit and flush_expired at 1M ≤ 1.2× their 1k figure (nothing scans all
buffers); emit_many's Redis share grows ≤ 1.1× the raw ceiling's growth, its client share ≤ 1.1×.
Every size gets its own private redis-server, filled once; then the sizes are
measured in interleaved rounds and each figure is the median over rounds, so the drift of a noisy
machine lands on every size alike instead of on whichever size happens to run last.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from typing import Any

import redis

from distbatch import Batcher
from distbatch.codec import encode_event

from .common import payload, private_redis, save, table

RAW = """
local d = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  redis.call('RPUSH', KEYS[i], ARGV[2 * i - 1])
  redis.call('ZADD', d, 'NX', 1125899906842624, ARGV[2 * i])
end
return 1
"""
SIZES = (1_000, 10_000, 100_000, 1_000_000)
FIGURES = ("emit_many_us_per_event", "emit_many_redis_us_per_event", "emit_many_cpu_us_per_event",
           "emit_many_code_us_per_event",
           "raw_us_per_event",
           "raw_redis_us_per_event", "emit_us_per_call", "flush_us_per_call")


def _populate(batcher: Batcher, size: int) -> None:
    for lo in range(0, size, 1000):
        chunk = range(lo, min(size, lo + 1000))
        batcher.emit_many("src", [{**payload(i, size), "k": f"p{i}"} for i in chunk])


def _script_us(client: redis.Redis) -> float:
    """Time Redis spent in scripts since the last reset (commandstats): server vs client cost."""
    return float(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


def _emit_cost(batcher: Batcher, rng: random.Random, open_keys: int, chunks: int) -> dict[str, float]:
    """emit_many(100) µs per event (all, and inside Redis), single emit µs per call."""
    events = [{**payload(i, 1), "k": f"p{rng.randrange(open_keys)}"} for i in range(chunks * 100)]
    batcher.client.config_resetstat()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(chunks):
        batcher.emit_many("src", events[i * 100 : (i + 1) * 100])
    many = (time.perf_counter() - t0) / len(events) * 1e6
    cpu = (time.process_time() - c0) / len(events) * 1e6
    many_redis = _script_us(batcher.client) / len(events)
    singles = events[: chunks * 5]
    t0 = time.perf_counter()
    for e in singles:
        batcher.emit("src", e)
    single = (time.perf_counter() - t0) / len(singles) * 1e6
    return {"emit_many_us_per_event": many, "emit_many_redis_us_per_event": many_redis,
            "emit_many_cpu_us_per_event": cpu, "emit_us_per_call": single}


def _client_only_cost(batcher: Batcher, rng: random.Random, open_keys: int, chunks: int) -> dict[str, float]:
    """emit_many(100)'s own client code, Redis replaced by canned replies: what is left of the
    client share once the shared caches and the socket are out of the picture."""
    events = [{**payload(i, 1), "k": f"p{rng.randrange(open_keys)}"} for i in range(chunks * 100)]
    c0 = time.process_time()
    for i in range(chunks):
        batcher.emit_many("src", events[i * 100 : (i + 1) * 100])
    return {"emit_many_code_us_per_event": (time.process_time() - c0) / len(events) * 1e6}


def _canned(batcher: Batcher) -> Batcher:
    """A batcher on the same namespace whose script calls all answer 'stored, nothing cut'."""
    canned = Batcher(batcher.client, namespace="scale", handoff=False)
    canned.bindings()  # loaded now, from the real Redis
    canned.transport.run = lambda script, calls, client=None: [[0]] * len(calls)  # type: ignore[method-assign]
    return canned


def _raw_cost(batcher: Batcher, rng: random.Random, open_keys: int, chunks: int) -> dict[str, float]:
    """The same appends as emit_many(100) through one minimal script call per 100-event chunk
    (RPUSH + ZADD NX per event: the batched ceiling of `bench ingest`).

    It appends well-formed events to the same open buffers and offers their existing member to
    the deadline set, so it leaves the state as emit would (ZADD NX changes nothing).
    """
    client = batcher.client
    script = client.register_script(RAW)
    prefix, deadlines = batcher.keys.buffer_prefix, batcher.keys.deadlines
    members = [f"scale@v1|=p{rng.randrange(open_keys)}" for _ in range(chunks * 100)]
    items = [(prefix + m, m, encode_event(f"raw-{i}", "src", 0, payload(i, 1), 1 << 20))
             for i, m in enumerate(members)]
    client.config_resetstat()
    t0 = time.perf_counter()
    for i in range(chunks):
        chunk = items[i * 100 : (i + 1) * 100]
        script(keys=[*(key for key, _, _ in chunk), deadlines],
               args=[x for _, member, data in chunk for x in (data, member)])
    return {"raw_us_per_event": (time.perf_counter() - t0) / len(items) * 1e6,
            "raw_redis_us_per_event": _script_us(client) / len(items)}


def _flush_cost(batcher: Batcher, calls: int) -> dict[str, float]:
    t0 = time.perf_counter()
    for _ in range(calls):
        assert not batcher.flush_step(500, with_events=False).batches
    return {"flush_us_per_call": (time.perf_counter() - t0) / calls * 1e6}


def run(quick: bool = False) -> dict[str, Any]:
    sizes = SIZES[:2] if quick else SIZES
    rounds, chunks, calls = (2, 20, 100) if quick else (9, 200, 300)
    samples: dict[int, dict[str, list[float]]] = {s: {f: [] for f in FIGURES} for s in sizes}
    fill: dict[int, float] = {}
    with contextlib.ExitStack() as stack:
        batchers: dict[int, Batcher] = {}
        canned: dict[int, Batcher] = {}
        for size in sizes:
            server = stack.enter_context(private_redis())
            batcher = Batcher.from_url(server.url, namespace="scale")
            batcher.register("scale", version="v1", source="src", handler="bench.handlers.record",
                             batch={"count": 1000, "window": "1d", "key": "k"})
            t0 = time.perf_counter()
            _populate(batcher, size)
            fill[size] = time.perf_counter() - t0
            assert batcher.client.zcard(batcher.keys.deadlines) == size
            batchers[size] = batcher
            canned[size] = _canned(batcher)
        time.sleep(2)  # let Redis finish rehashing its grown dicts before timing
        rng = random.Random(7)
        for _ in range(rounds):
            order = list(sizes)
            rng.shuffle(order)
            for size in order:
                b = batchers[size]
                figures = {**_emit_cost(b, rng, size, chunks), **_raw_cost(b, rng, size, chunks),
                           **_flush_cost(b, calls), **_client_only_cost(canned[size], rng, size, chunks)}
                for f, v in figures.items():
                    samples[size][f].append(v)
    rows: list[dict[str, Any]] = []
    for size in sizes:
        row: dict[str, Any] = {"open_buffers": size, "fill_s": fill[size]}
        row.update({f: statistics.median(v) for f, v in samples[size].items()})
        row["emit_many_client_us_per_event"] = (
            row["emit_many_us_per_event"] - row["emit_many_redis_us_per_event"]
        )
        row["raw_client_us_per_event"] = row["raw_us_per_event"] - row["raw_redis_us_per_event"]
        rows.append(row)
    base = rows[0]
    for r in rows:
        for k in ("emit_many_us_per_event", "emit_us_per_call", "flush_us_per_call", "raw_us_per_event",
                  "emit_many_cpu_us_per_event", "emit_many_code_us_per_event", "raw_client_us_per_event",
                  "emit_many_client_us_per_event", "emit_many_redis_us_per_event", "raw_redis_us_per_event"):
            r[k.replace("_us_per_event", "").replace("_us_per_call", "") + "_vs_1k"] = r[k] / base[k]
    shown = {"open_buffers": "open", "emit_many_us_per_event": "many_us", "emit_many_vs_1k": "many_x",
             "emit_many_redis_us_per_event": "many_redis", "emit_many_client_us_per_event": "many_client",
             "emit_many_redis_vs_1k": "redis_x", "emit_many_client_vs_1k": "client_x",
             "emit_many_cpu_us_per_event": "client_cpu",
             "emit_many_cpu_vs_1k": "cpu_x", "emit_many_code_us_per_event": "code_only",
             "emit_many_code_vs_1k": "code_x", "raw_us_per_event": "raw_us", "raw_vs_1k": "raw_x",
             "raw_redis_us_per_event": "raw_redis", "raw_redis_vs_1k": "raw_redis_x",
             "raw_client_vs_1k": "raw_client_x", "emit_us_per_call": "emit_us", "emit_vs_1k": "emit_x",
             "flush_us_per_call": "flush_us", "flush_vs_1k": "flush_x"}
    print(f"medians of {rounds} interleaved rounds; µs per event (emit_many, raw) or per call (emit, "
          "flush); _redis = inside Redis (commandstats); client = the rest of the wall time; "
          "client_cpu = the emitting process's CPU time; code_only = emit_many with canned replies "
          "(no Redis, no socket); _x = ratio to the 1k row")
    print(table([{shown[k]: r[k] for k in shown} for r in rows], list(shown.values())))
    result = {"rounds": rounds, "rows": rows}
    save("scaling", result, quick)
    return result


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
