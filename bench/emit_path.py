"""The single-event emit path: µs per call with this thread's own connection (what `emit` does)
against a pool checkout and check-in per call (what it did before), and the script's own time.

Baseline in the same run: the same Batcher with `_emit_client` pointed back at the pooled client.
Rounds alternate; figures are medians.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from distbatch import Batcher

from .common import payload, private_redis, save, table


def _round(batcher: Batcher, events: list[dict[str, Any]]) -> tuple[float, float]:
    """µs per emit call, and µs of it inside Redis (commandstats of EVALSHA)."""
    batcher.client.config_resetstat()
    t0 = time.perf_counter()
    for e in events:
        batcher.emit("src", e)
    wall = (time.perf_counter() - t0) / len(events) * 1e6
    script = batcher.client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
    return wall, float(script)


def run(quick: bool = False) -> dict[str, Any]:
    calls, rounds = (500, 2) if quick else (3000, 7)
    own: list[tuple[float, float]] = []
    pooled: list[tuple[float, float]] = []
    with private_redis() as server:
        batcher = Batcher.from_url(server.url, namespace="emitpath")
        batcher.register("p", version="v1", source="src", handler="bench.handlers.record",
                         batch={"count": 100, "window": "1h", "key": "k"})
        events = [payload(i, 1000) for i in range(calls)]
        batcher.emit("src", events[0])
        transport = batcher.transport
        own_emitter = transport.emitter
        _, emitter, call_ids = own_emitter()
        for _ in range(rounds):
            transport.emitter = own_emitter  # type: ignore[method-assign]
            own.append(_round(batcher, events))
            transport.emitter = lambda: (batcher.client, emitter, call_ids)  # type: ignore[method-assign]
            pooled.append(_round(batcher, events))
    rows = [{"path": path, "us_per_emit": statistics.median(w for w, _ in v),
             "us_in_redis": statistics.median(s for _, s in v)}
            for path, v in (("own connection per thread (emit)", own),
                            ("pool checkout per call (baseline)", pooled))]
    ratio = statistics.median(o[0] / p[0] for o, p in zip(own, pooled, strict=True))
    print(f"{calls} single-event emits per round, median of {rounds} alternating rounds")
    print(table(rows, ["path", "us_per_emit", "us_in_redis"]))
    print(f"own connection / pool checkout = {ratio:.2f} (median of the per-round ratios)")
    result = {"calls": calls, "rounds": rounds, "rows": rows, "ratio": ratio}
    save("emit_path", result, quick)
    return result


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
