"""What a cut costs inside Redis, against what ingesting the same events costs, taken apart.

`bench ingest`'s ceilings never cut: they only RPUSH and ZADD. distbatch cuts a buffer when it
reaches `count`, in the script that took the event: the buffer's events come into Lua (LRANGE),
are joined into one string (table.concat) and written as the batch record's one field (HSET),
and the same string goes back in the reply (`EmitResult.batch`). A batch record is a field of the
shard's `rec:*` hashes because a script may only touch keys its caller names (Redis Cluster), and a
batch id is made inside the script, so a key per batch cannot be named up front.

Same Redis, same encoded events (≈200-byte payloads, `count` 100, 1000 partition keys): the
EVALSHA time of an `emit_many(1000)` that cuts no buffer against one that cuts all 1000 (one event
each), and bare scripts doing each step on a list of the same 100 events. Medians of the rounds.
"""

from __future__ import annotations

import statistics
from typing import Any

import msgpack
import redis

from distbatch import Batcher

from .common import payload, private_redis, save, table
from .ingest import COUNT, KEYS  # bench ingest's workload: 1000 partition keys, count 100

STEPS = {
    "LRANGE of the 100 events into Lua": "local t = redis.call('LRANGE', KEYS[1], 0, -1) return #t",
    "... and table.concat": "local t = redis.call('LRANGE', KEYS[1], 0, -1) return #table.concat(t)",
    "... and HSET of the joined string": "local t = redis.call('LRANGE', KEYS[1], 0, -1) "
                                         "redis.call('HSET', KEYS[2], 'b', table.concat(t)) return 1",
    "GET of the joined string into Lua (as a claim's HGET)": "return #redis.call('GET', KEYS[3])",
}


def _usec(client: redis.Redis) -> float:
    return float(client.info("commandstats")["cmdstat_evalsha"]["usec"])


def run(quick: bool = False) -> dict[str, Any]:
    rounds = 1 if quick else 3
    with private_redis() as server:
        client = redis.Redis.from_url(server.url)
        b = Batcher.from_url(server.url, namespace="cut", handoff=False)
        b.register("cut", version="v1", source="src", handler="bench.handlers.record",
                   batch={"count": COUNT, "window": "1h", "key": "k"})
        events = [{**payload(i, KEYS), "k": f"key{i}"} for i in range(KEYS)]
        quiet: list[float] = []
        cutting: list[float] = []
        for _ in range(rounds):
            for n in range(COUNT):  # the COUNT-th call cuts every buffer, the others none
                client.config_resetstat()
                results = b.emit_many("src", events)
                (cutting if n == COUNT - 1 else quiet).append(_usec(client))
                assert sum(r.batch is not None for r in results) == (KEYS if n == COUNT - 1 else 0)
        blob = client.hvals(b.keys.rec_events)[0]
        assert isinstance(blob, bytes)
        sample = _events_of(blob)  # one batch's 100 encoded events
        client.rpush("bare:list", *sample)
        client.set("bare:joined", b"".join(sample))
        steps: dict[str, float] = {}
        for name, src in STEPS.items():
            sha = client.script_load(src)
            runs = []
            for _ in range(rounds):
                client.config_resetstat()
                for _ in range(200):
                    client.evalsha(sha, 3, "bare:list", "bare:hash", "bare:joined")
                runs.append(_usec(client) / 200)
            steps[name] = statistics.median(runs)
    per_event_in = statistics.median(quiet) / KEYS
    per_cut = (statistics.median(cutting) - statistics.median(quiet)) / KEYS
    rows = [{"what": "ingest, per event (a call that cuts nothing)", "us": per_event_in},
            {"what": f"a cut of {COUNT} events, over ingesting its last event", "us": per_cut},
            {"what": "  ... per event it cuts", "us": per_cut / COUNT}]
    rows += [{"what": f"  bare: {name}", "us": us} for name, us in steps.items()]
    print(f"inside Redis (EVALSHA commandstats), µs; {KEYS} partition keys, count {COUNT}, "
          f"{len(sample[0])}-byte events, median of {rounds} rounds")
    print(table(rows, ["what", "us"]))
    print(f"a cut costs {per_cut / COUNT / per_event_in:.2f}x ingest per event it cuts")
    result = {"per_event_ingest_us": per_event_in, "per_cut_us": per_cut, "steps_us": steps,
              "event_bytes": len(sample[0]), "rounds": rounds}
    save("cut", result, quick)
    return result


def _events_of(blob: bytes) -> list[bytes]:
    """The encoded events of a batch record (joined msgpack), apart again."""
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(blob)
    return [msgpack.packb(e) for e in unpacker]


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
