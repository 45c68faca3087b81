"""Expiry lateness: partial batches with 100 ms windows, spread over time.

Reports (cut − deadline) and (handler start − deadline), p50 / p99 / max, for the distbatch
sweeper (sleeps until the next deadline, woken by accumulate) against a baseline sweeper that
polls every 50 ms, in the same run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from distbatch import Batcher

from .common import private_redis, save, spawn, stop, summary, table, wait_counter

WINDOW_MS = 100


def measure(url: str, sweeper: str, batches: int, rate: float) -> dict[str, Any]:
    ns = f"late-{sweeper}"
    client = redis.Redis.from_url(url)
    client.delete("bench:late", "bench:events")
    batcher = Batcher.from_url(url, namespace=ns)
    batcher.register("late", version="v1", source="src", handler="bench.handlers.lateness",
                     batch={"count": 10, "window": f"{WINDOW_MS}ms", "key": "k"})
    logdir = Path(tempfile.mkdtemp(prefix="bench-late-"))
    procs = [spawn("-m", "distbatch.cli", "worker", "--redis-url", url, "--namespace", ns,
                   "--handlers", "bench.handlers", url=url, log=logdir / "worker.log")]
    if sweeper == "distbatch":
        procs.append(spawn("-m", "distbatch.cli", "sweeper", "--redis-url", url, "--namespace", ns,
                           url=url, log=logdir / "sweeper.log"))
    else:
        procs.append(spawn("-m", "bench.poll_sweeper", url, ns, "0.05", url=url, log=logdir / "poll.log"))
    try:
        time.sleep(1.0)  # let the worker and sweeper connect
        t0 = time.perf_counter()
        for i in range(batches):
            now_ms = time.time() * 1000
            batcher.emit("src", {"k": f"key-{i}", "opened_ms": now_ms, "window_ms": WINDOW_MS})
            time.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
        wait_counter(client, "bench:events", batches, timeout=60)
        rows = [tuple(map(float, x.split())) for x in client.lrange("bench:late", 0, -1)]
        return {"sweeper": sweeper, "cut": summary([r[0] for r in rows]),
                "start": summary([r[1] for r in rows]), "cut_values": [r[0] for r in rows],
                "start_values": [r[1] for r in rows]}
    finally:
        stop(procs)
        batcher.drop("late@v1")


def run(quick: bool = False) -> dict[str, Any]:
    batches, rate = (200, 200.0) if quick else (2000, 100.0)  # one worker keeps up with 100/s
    sparse, sparse_rate = (10, 5.0) if quick else (40, 3.0)  # one window at a time: Redis idles
    with private_redis() as server:
        ours = measure(server.url, "distbatch", batches, rate)
        base = measure(server.url, "poll-50ms", batches, rate)
        ours_idle = measure(server.url, "distbatch", sparse, sparse_rate)
        base_idle = measure(server.url, "poll-50ms", sparse, sparse_rate)
    qs = ("p50", "p99", "max")
    rows = [{"sweeper": m["sweeper"], "load": load, **{f"cut_{k}": m["cut"][k] for k in qs},
             **{f"start_{k}": m["start"][k] for k in qs}}
            for m, load in ((ours, f"{batches} at {rate:g}/s"), (base, f"{batches} at {rate:g}/s"),
                            (ours_idle, f"{sparse} at {sparse_rate:g}/s"),
                            (base_idle, f"{sparse} at {sparse_rate:g}/s"))]
    print(f"partial batches, {WINDOW_MS} ms windows, lateness in ms after the deadline")
    print(table(rows, ["sweeper", "load", "cut_p50", "cut_p99", "cut_max", "start_p50", "start_p99",
                       "start_max"]))
    ratio = ours["cut"]["p99"] / base["cut"]["p99"] if base["cut"]["p99"] else None
    print(f"cut p99 distbatch / polling baseline = {ratio:.2f}" if ratio else "")
    result = {"batches": batches, "window_ms": WINDOW_MS, "distbatch": ours, "baseline": base,
              "idle": {"batches": sparse, "distbatch": ours_idle, "baseline": base_idle}, "p99_ratio": ratio}
    save("lateness", result, quick)
    return result


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
