"""The single-event emit against its physical limit, taken apart: where the extra time goes.

Baselines in the same run, on the same Redis: a plain EVALSHA of the minimal script (`RPUSH` +
`ZADD NX`, as in `bench ingest`) with the same payloads, one call per event, sent straight on a
dedicated connection the way distbatch sends its own (`distbatch.roundtrip`: the floor), and the
same call through redis-py's `Script` (its per-command machinery included). A third baseline does
the Redis commands of `accumulate_one.lua`'s common path (the call id's `SET ... KEEPTTL GET`,
the registry epoch's `GET`, `TIME`, the run-out windows' `ZCOUNT`, `RPUSH`, the `events_in`
counter, and `ZADD` when the buffer is new) in a bare script of its own, sent the same way: what
the guarantees those commands carry cost with nothing of distbatch around them. Rounds rotate;
figures are medians. Per call: wall time, the calling process's CPU time (client code,
redis-py and the socket system calls), and the script's own time inside Redis (commandstats).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import msgpack
import redis

from distbatch import Batcher
from distbatch.roundtrip import execute_one

from .common import payload, private_redis, save, table
from .ingest import MINIMAL

SAME_COMMANDS = """
local prior = redis.call('SET', KEYS[2], ARGV[3], 'KEEPTTL', 'GET')
local current = redis.call('GET', KEYS[1])
local now = redis.call('TIME')
local late = redis.call('ZCOUNT', KEYS[3], '-inf', now[1] * 1000)
local n = redis.call('RPUSH', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'events_in:p@v1', 1)
if n == 1 then redis.call('ZADD', KEYS[3], ARGV[2], KEYS[4]) end
return {tonumber(now[1])}
"""


def _timed(client: redis.Redis, calls: int, fn: Any) -> tuple[float, float, float]:
    """µs per call: wall, this process's CPU, inside Redis (EVALSHA commandstats)."""
    client.config_resetstat()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall = (time.perf_counter() - t0) / calls * 1e6
    cpu = (time.process_time() - c0) / calls * 1e6
    usec = client.info("commandstats")["cmdstat_evalsha"]["usec"]
    return wall, cpu, float(usec) / calls


def run(quick: bool = False) -> dict[str, Any]:
    calls, rounds = (500, 2) if quick else (3000, 9)
    ours: list[tuple[float, float, float]] = []
    floor: list[tuple[float, float, float]] = []
    via_py: list[tuple[float, float, float]] = []
    same: list[tuple[float, float, float]] = []
    with private_redis() as server:
        batcher = Batcher.from_url(server.url, namespace="emitpath")
        batcher.register("p", version="v1", source="src", handler="bench.handlers.record",
                         batch={"count": 100, "window": "1h", "key": "k"})
        client = redis.Redis.from_url(server.url)
        script = client.register_script(MINIMAL)
        same_sha = client.script_load(SAME_COMMANDS)
        client.set("same:regver", "1")
        direct = redis.Redis.from_url(server.url, single_connection_client=True)
        events = [payload(i, 1000) for i in range(calls)]
        items = [(f"base:buf:{i % 1000}", msgpack.packb(e)) for i, e in enumerate(events)]
        batcher.emit("src", events[0])
        script(keys=["warm", "warm:z"], args=[b"x", 0])

        def emit_all() -> None:
            for e in events:
                batcher.emit("src", e)

        def minimal_all() -> None:
            for key, data in items:
                execute_one(direct, ("EVALSHA", script.sha, 2, key, "base:deadlines", data, 1_000_000))

        def redis_py_all() -> None:
            for key, data in items:
                script(keys=[key, "base:deadlines"], args=[data, 1_000_000])

        call_ids = iter(range(1, 1 << 62))

        def same_all() -> None:
            for key, data in items:
                execute_one(direct, ("EVALSHA", same_sha, 5, "same:regver", "same:call", "same:deadlines",
                                     "same:" + key, "same:stats", data, 1_000_000, next(call_ids)))

        sides = [(emit_all, ours), (minimal_all, floor), (redis_py_all, via_py), (same_all, same)]
        for r in range(rounds):  # rotate, so the machine's drift hits every side alike
            for fn, out in sides[r % 4:] + sides[:r % 4]:
                out.append(_timed(client, calls, fn))
    rows = []
    for side, v in (("distbatch emit (one event, one binding)", ours),
                    ("plain EVALSHA of the minimal script, straight on the connection (floor)", floor),
                    ("the same EVALSHA through redis-py's Script", via_py),
                    ("plain EVALSHA of a bare script doing accumulate_one's commands, straight", same)):
        wall, cpu, in_redis = (statistics.median(x[i] for x in v) for i in range(3))
        rows.append({"side": side, "us_per_call": wall, "client_cpu_us": cpu, "in_redis_us": in_redis,
                     "rest_us": wall - cpu - in_redis})
    ratio = statistics.median(f[0] / o[0] for o, f in zip(ours, floor, strict=True))
    ratio_py = statistics.median(f[0] / o[0] for o, f in zip(ours, via_py, strict=True))
    ratio_same = statistics.median(f[0] / o[0] for o, f in zip(ours, same, strict=True))
    floor_same = statistics.median(f[0] / s[0] for s, f in zip(same, floor, strict=True))
    gap = {k: rows[0][k] - rows[1][k] for k in ("us_per_call", "client_cpu_us", "in_redis_us", "rest_us")}
    print(f"{calls} single-event calls per round, median of {rounds} alternating rounds; rest = wall "
          "- client CPU - script time (waiting on the loopback and on Redis reading the call)")
    print(table(rows, ["side", "us_per_call", "client_cpu_us", "in_redis_us", "rest_us"]))
    print(f"floor / emit = {ratio:.2f} (goal >= 0.91, i.e. emit <= 1.1x the floor's time); the gap "
          f"of {gap['us_per_call']:.0f} µs: client CPU {gap['client_cpu_us']:+.0f}, inside Redis "
          f"{gap['in_redis_us']:+.0f}, rest {gap['rest_us']:+.0f}")
    print(f"redis-py Script / emit = {ratio_py:.2f}")
    print(f"bare script of the same commands / emit = {ratio_same:.2f}; floor / that bare script = "
          f"{floor_same:.2f} (what the commands alone leave of the floor's speed)")
    result = {"calls": calls, "rounds": rounds, "rows": rows, "ratio": ratio, "ratio_redis_py": ratio_py,
              "ratio_same_commands": ratio_same, "floor_vs_same_commands": floor_same, "gap": gap}
    save("emit_path", result, quick)
    return result


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
