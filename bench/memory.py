"""Memory: Redis used_memory growth per buffered event versus the msgpack size of its payload.

Baseline in the same run: the same payloads RPUSHed raw (pre-encoded) into as many lists, the
least Redis can spend on them. Goal: distbatch ≤ payload + 64 bytes per event.
"""

from __future__ import annotations

import gc
from typing import Any

import msgpack
import redis

from distbatch import Batcher

from .common import payload, private_redis, save, table

KEYS = 1000


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run(quick: bool = False) -> dict[str, Any]:
    events = 10_000 if quick else 100_000
    data = [payload(i, KEYS) for i in range(events)]
    avg_payload = sum(len(msgpack.packb(p)) for p in data) / events
    with private_redis() as server:
        client = redis.Redis.from_url(server.url)
        batcher = Batcher.from_url(server.url, namespace="mem")
        batcher.register("mem", version="v1", source="src", handler="bench.handlers.record",
                         batch={"count": 1000, "window": "1d", "key": "k"})
        batcher.emit("warmup", {})
        before = _used(client)
        for lo in range(0, events, 1000):
            batcher.emit_many("src", data[lo : lo + 1000])
        ours = (_used(client) - before) / events
        assert client.zcard(batcher.keys.deadlines) == KEYS
        batcher.drop("mem@v1")
        gc.collect()
        before = _used(client)
        pipe = client.pipeline(transaction=False)
        for i, p in enumerate(data):
            pipe.rpush(f"raw:{p['k']}", msgpack.packb(p))
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        raw = (_used(client) - before) / events
    rows = [{"store": "distbatch buffer", "bytes_per_event": ours, "over_payload": ours - avg_payload},
            {"store": "raw RPUSH (baseline)", "bytes_per_event": raw, "over_payload": raw - avg_payload}]
    print(f"{events} buffered events in {KEYS} buffers, payload {avg_payload:.1f} bytes (msgpack)")
    print(table(rows, ["store", "bytes_per_event", "over_payload"]))
    print(f"distbatch / raw = {ours / raw:.2f}")
    result = {"events": events, "payload_bytes": avg_payload, "distbatch_bytes_per_event": ours,
              "raw_bytes_per_event": raw, "ratio": ours / raw}
    save("memory", result, quick)
    return result


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
