"""Producers in separate OS processes hammer the same buffers: nothing lost, doubled or oversized."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import redis

from distbatch import Batcher
from distbatch.codec import decode_events

from .redis_server import RedisServer, env_with_path

PRODUCERS, PER_PRODUCER, COUNT = 4, 5000, 7


def test_concurrent_producers_cut_exact_batches(redis_server: RedisServer) -> None:
    ns = "mp"
    b = Batcher.from_url(redis_server.url, namespace=ns)
    b.register("hot", version="v1", source="s", handler="m.h", batch={"count": COUNT, "window": "1h"})
    b.register("keyed", version="v1", source="s", handler="m.h",
               batch={"count": COUNT, "window": "1h", "key": "k"})
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.producer", redis_server.url, ns, "s",
                          str(p), str(PER_PRODUCER)], env=env_with_path(), stdout=subprocess.PIPE)
        for p in range(PRODUCERS)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out
    client = redis.Redis.from_url(redis_server.url)
    seen: dict[str, Counter] = {"hot@v1": Counter(), "keyed@v1": Counter()}
    batch_ids = client.zrange(b.keys.ready, 0, -1)
    assert len(batch_ids) == len(set(batch_ids))
    for bid in batch_ids:
        batch = b.get_batch(bid.decode())
        assert batch.reason == "count" and len(batch.events) == COUNT
        if batch.binding == "keyed@v1":
            assert {e.payload["k"] for e in batch.events} == {batch.partition_key}
        per_producer: dict[str, list[int]] = {}
        for e in batch.events:
            per_producer.setdefault(e.payload["p"], []).append(e.payload["i"])
        assert all(seq == sorted(seq) for seq in per_producer.values())  # arrival order kept
        seen[batch.binding].update((e.payload["p"], e.payload["i"]) for e in batch.events)
    for key in client.keys(b.keys.buffer_prefix + "*"):
        binding = key.decode().split(":buf:")[1].split("|")[0]
        events = decode_events(b"".join(client.lrange(key, 0, -1)))
        assert len(events) < COUNT
        seen[binding].update((e.payload["p"], e.payload["i"]) for e in events)
    expected = {(str(p), i) for p in range(PRODUCERS) for i in range(PER_PRODUCER)}
    for binding, counter in seen.items():
        assert set(counter) == expected, binding
        assert max(counter.values()) == 1, binding
    stats = client.hgetall(b.keys.stats)
    assert int(stats[b"events_in:hot@v1"]) == PRODUCERS * PER_PRODUCER
    assert int(stats[b"batches_count:hot@v1"]) == PRODUCERS * PER_PRODUCER // COUNT
