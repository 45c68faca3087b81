"""Ingest: events/s accepted by emit and emit_many, against the raw redis-py ceiling.

Ceiling (same run, same Redis): an EVALSHA of a minimal RPUSH + ZADD script with pre-encoded
payloads, one EVALSHA per event: one call per round trip for `emit`, `chunk` of them pipelined per
round trip for `emit_many`. Batched ceilings: one EVALSHA per chunk. Every ceiling is sent the way
distbatch sends its own calls, straight on a dedicated connection (`distbatch.roundtrip`, without
redis-py's per-command machinery): the fastest way to send the same work from Python.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import random
import statistics
import time
from typing import Any

import msgpack
import redis

from distbatch import Batcher
from distbatch.roundtrip import execute, execute_one

from .common import payload, payload_size, private_redis, save, table

KEYS, COUNT = 1000, 100
MINIMAL = "redis.call('RPUSH', KEYS[1], ARGV[1]) redis.call('ZADD', KEYS[2], 'NX', ARGV[2], KEYS[1]) return 1"
BATCHED = """
local d = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  redis.call('RPUSH', KEYS[i], ARGV[i])
  redis.call('ZADD', d, 'NX', 1000000, KEYS[i])
end
return 1
"""


class _Collector:
    """Time spent in the cyclic garbage collector while timed: the one cost a producer's own
    objects add that neither Redis nor the code's profile shows."""

    def __init__(self) -> None:
        self.seconds, self.full, self._t0 = 0.0, 0, 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.full += info["generation"] == 2


def _batched(url: str, chunk: int, n: int, seed: int, barrier: Any, out: Any, encode: bool) -> None:
    """One EVALSHA per chunk doing the minimal Redis work (RPUSH + ZADD NX per event); with
    `encode`, the payloads are msgpack-encoded inside the timed loop, as emit_many must."""
    client = redis.Redis.from_url(url, single_connection_client=True)
    sha = client.script_load(BATCHED)
    rng = random.Random(seed)
    events = [payload(rng.randrange(1 << 30), KEYS) for _ in range(n)]
    keys = [f"batched:buf:{rng.randrange(KEYS)}" for _ in range(n)]
    encoded = [msgpack.packb(e) for e in events]
    barrier.wait()
    collector = _Collector()
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, n, chunk):
        data = ([msgpack.packb(e) for e in events[start : start + chunk]] if encode
                else encoded[start : start + chunk])
        execute_one(client, ("EVALSHA", sha, len(data) + 1, *keys[start : start + chunk], "batched:deadlines",
                             *data))
    out.put((time.perf_counter() - t0, time.process_time() - c0, collector.seconds))


def _batched_encoding(url: str, chunk: int, n: int, seed: int, barrier: Any, out: Any) -> None:
    _batched(url, chunk, n, seed, barrier, out, True)


def _batched_raw(url: str, chunk: int, n: int, seed: int, barrier: Any, out: Any) -> None:
    _batched(url, chunk, n, seed, barrier, out, False)


def _baseline(url: str, chunk: int, n: int, seed: int, barrier: Any, out: Any) -> None:
    client = redis.Redis.from_url(url, single_connection_client=True)
    sha = client.script_load(MINIMAL)
    rng = random.Random(seed)
    items = [(f"base:buf:{rng.randrange(KEYS)}", msgpack.packb(payload(i, KEYS))) for i in range(n)]
    barrier.wait()
    collector = _Collector()
    t0, c0 = time.perf_counter(), time.process_time()
    if chunk == 1:  # one plain call per event: a pipeline of one would only add overhead
        for key, data in items:
            execute_one(client, ("EVALSHA", sha, 2, key, "base:deadlines", data, 1_000_000))
    else:
        for start in range(0, n, chunk):
            execute(client, [("EVALSHA", sha, 2, key, "base:deadlines", data, 1_000_000)
                             for key, data in items[start : start + chunk]])
    out.put((time.perf_counter() - t0, time.process_time() - c0, collector.seconds))


def _distbatch(url: str, chunk: int, n: int, seed: int, barrier: Any, out: Any) -> None:
    batcher = Batcher.from_url(url, namespace="ingest")
    batcher.bindings()  # loads the registry: the first timed call pays no extra read
    rng = random.Random(seed)
    events = [payload(rng.randrange(1 << 30), KEYS) for _ in range(n)]
    barrier.wait()
    collector = _Collector()
    t0, c0 = time.perf_counter(), time.process_time()
    if chunk == 1:
        for e in events:
            batcher.emit("src", e)
    else:
        for start in range(0, n, chunk):
            batcher.emit_many("src", events[start : start + chunk])
    out.put((time.perf_counter() - t0, time.process_time() - c0, collector.seconds))


def _measure(target: Any, url: str, chunk: int, n: int, procs: int) -> tuple[float, float, float, float]:
    """events/s over all producers; per event: a producer's CPU time (its code, its client library
    and its socket system calls, µs), the scripts' own time inside Redis (EVALSHA commandstats,
    µs) and a producer's time in the garbage collector (µs, part of its CPU time)."""
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    stats = redis.Redis.from_url(url)
    stats.config_resetstat()
    workers = [ctx.Process(target=target, args=(url, chunk, n, p, barrier, out)) for p in range(procs)]
    for w in workers:
        w.start()
    times = [out.get(timeout=300) for _ in workers]
    for w in workers:
        w.join()
    in_redis = float(stats.info("commandstats")["cmdstat_evalsha"]["usec"])
    return (n * procs / max(t for t, _, _ in times), sum(c for _, c, _ in times) / (n * procs) * 1e6,
            in_redis / (n * procs), sum(g for _, _, g in times) / (n * procs) * 1e6)


def run(quick: bool = False) -> dict[str, Any]:
    rounds = 1 if quick else 3
    rows = []
    costs: list[dict[str, Any]] = []
    with private_redis() as server:
        server_client = redis.Redis.from_url(server.url)
        for procs in (1, 2):
            for chunk in (1, 100, 1000):
                n = (2_000 if quick else 10_000) if chunk == 1 else (10_000 if quick else 50_000)
                base: list[tuple[float, float, float, float]] = []
                ours: list[tuple[float, float, float, float]] = []
                enc: list[tuple[float, float, float, float]] = []
                raw: list[tuple[float, float, float, float]] = []
                for _ in range(rounds):  # alternate, so the machine's drift hits both sides alike
                    server_client.flushdb()  # private server: every round starts from empty
                    b = Batcher.from_url(server.url, namespace="ingest")
                    b.register("ingest", version="v1", source="src", handler="bench.handlers.record",
                               batch={"count": COUNT, "window": "1h", "key": "k"})
                    base.append(_measure(_baseline, server.url, chunk, n, procs))
                    ours.append(_measure(_distbatch, server.url, chunk, n, procs))
                    if chunk > 1:
                        enc.append(_measure(_batched_encoding, server.url, chunk, n, procs))
                        raw.append(_measure(_batched_raw, server.url, chunk, n, procs))
                ours_s, base_s = statistics.median(x[0] for x in ours), statistics.median(x[0] for x in base)
                row = {"producers": procs, "call": "emit" if chunk == 1 else f"emit_many({chunk})",
                       "distbatch_ev_s": ours_s, "ceiling_ev_s": base_s,
                       "ratio": statistics.median(o[0] / c[0] for o, c in zip(ours, base, strict=True))}
                if chunk > 1:
                    row.update(
                        batched_enc_ev_s=statistics.median(x[0] for x in enc),
                        batched_raw_ev_s=statistics.median(x[0] for x in raw),
                        ratio_enc=statistics.median(o[0] / c[0] for o, c in zip(ours, enc, strict=True)),
                        ratio_raw=statistics.median(o[0] / c[0] for o, c in zip(ours, raw, strict=True)))
                rows.append(row)
                for side, v in (("distbatch", ours), ("ceiling", base), ("batched enc", enc)):
                    if v:
                        costs.append({"producers": procs, "call": row["call"], "side": side,
                                      "client_cpu_us_per_ev": statistics.median(x[1] for x in v),
                                      "in_redis_us_per_ev": statistics.median(x[2] for x in v),
                                      "gc_us_per_ev": statistics.median(x[3] for x in v)})
    print(f"events/s, median of {rounds} alternating rounds; ratio = median of the per-round ratios")
    print("ceiling: one minimal EVALSHA per event (plain call for emit, pipelined for emit_many);")
    print("batched: one minimal EVALSHA per chunk, payloads msgpack-encoded in the loop (enc) "
          "or before it (raw)")
    print(table(rows, ["producers", "call", "distbatch_ev_s", "ceiling_ev_s", "ratio",
                       "batched_enc_ev_s", "ratio_enc", "batched_raw_ev_s", "ratio_raw"]))
    print("where the time goes, per event (medians): the producers' CPU (µs, mean over producers), "
          "the scripts' time inside Redis (µs), and of the CPU the time in Python's garbage collector")
    print(table(costs, ["producers", "call", "side", "client_cpu_us_per_ev", "in_redis_us_per_ev",
                        "gc_us_per_ev"]))
    result = {"payload_bytes": payload_size(), "count": COUNT, "keys": KEYS, "rounds": rounds, "rows": rows,
              "costs": costs}
    save("ingest", result, quick)
    return result


if __name__ == "__main__":
    run()
