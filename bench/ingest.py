"""Ingest: events/s accepted by emit and emit_many, against the raw redis-py ceiling.

Ceiling (same run, same Redis): an EVALSHA of a minimal RPUSH + ZADD script with pre-encoded
payloads, one EVALSHA per event: a plain redis-py call for `emit`, `chunk` of them pipelined per
round trip for `emit_many`.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import statistics
import time
from typing import Any

import msgpack
import redis

from distbatch import Batcher

from .common import payload, payload_size, private_redis, save, table

KEYS, COUNT = 1000, 100
MINIMAL = "redis.call('RPUSH', KEYS[1], ARGV[1]) redis.call('ZADD', KEYS[2], 'NX', ARGV[2], KEYS[1]) return 1"


def _baseline(url: str, chunk: int, n: int, seed: int, barrier: Any, out: Any) -> None:
    client = redis.Redis.from_url(url)
    script = client.register_script(MINIMAL)
    script(keys=["warm", "warm:z"], args=[b"x", 0])
    rng = random.Random(seed)
    items = [(f"base:buf:{rng.randrange(KEYS)}", msgpack.packb(payload(i, KEYS))) for i in range(n)]
    barrier.wait()
    t0 = time.perf_counter()
    if chunk == 1:  # one plain call per event: a pipeline of one would only add overhead
        for key, data in items:
            script(keys=[key, "base:deadlines"], args=[data, 1_000_000])
    else:
        for start in range(0, n, chunk):
            pipe = client.pipeline(transaction=False)
            for key, data in items[start : start + chunk]:
                script(keys=[key, "base:deadlines"], args=[data, 1_000_000], client=pipe)
            pipe.execute()
    out.put(time.perf_counter() - t0)


def _distbatch(url: str, chunk: int, n: int, seed: int, barrier: Any, out: Any) -> None:
    batcher = Batcher.from_url(url, namespace="ingest")
    batcher.emit("warmup", {})
    rng = random.Random(seed)
    events = [payload(rng.randrange(1 << 30), KEYS) for _ in range(n)]
    barrier.wait()
    t0 = time.perf_counter()
    if chunk == 1:
        for e in events:
            batcher.emit("src", e)
    else:
        for start in range(0, n, chunk):
            batcher.emit_many("src", events[start : start + chunk])
    out.put(time.perf_counter() - t0)


def _measure(target: Any, url: str, chunk: int, n: int, procs: int) -> float:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=target, args=(url, chunk, n, p, barrier, out)) for p in range(procs)]
    for w in workers:
        w.start()
    times = [out.get(timeout=300) for _ in workers]
    for w in workers:
        w.join()
    return n * procs / max(times)


def run(quick: bool = False) -> dict[str, Any]:
    rounds = 1 if quick else 3
    rows = []
    with private_redis() as server:
        b = Batcher.from_url(server.url, namespace="ingest")
        server_client = redis.Redis.from_url(server.url)
        for procs in (1, 2):
            for chunk in (1, 100, 1000):
                n = (2_000 if quick else 10_000) if chunk == 1 else (10_000 if quick else 50_000)
                base: list[float] = []
                ours: list[float] = []
                for _ in range(rounds):  # alternate, so the machine's drift hits both sides alike
                    server_client.flushdb()  # private server: every round starts from empty
                    b.register("ingest", version="v1", source="src", handler="bench.handlers.record",
                               batch={"count": COUNT, "window": "1h", "key": "k"})
                    base.append(_measure(_baseline, server.url, chunk, n, procs))
                    ours.append(_measure(_distbatch, server.url, chunk, n, procs))
                ours_s, base_s = statistics.median(ours), statistics.median(base)
                rows.append({"producers": procs, "call": "emit" if chunk == 1 else f"emit_many({chunk})",
                             "distbatch_ev_s": ours_s, "ceiling_ev_s": base_s,
                             "ratio": statistics.median(o / c for o, c in zip(ours, base, strict=True))})
    print(f"events/s, median of {rounds} alternating rounds; ratio = median of the per-round ratios")
    print(table(rows, ["producers", "call", "distbatch_ev_s", "ceiling_ev_s", "ratio"]))
    result = {"payload_bytes": payload_size(), "count": COUNT, "keys": KEYS, "rounds": rounds, "rows": rows}
    save("ingest", result, quick)
    return result


if __name__ == "__main__":
    run()
