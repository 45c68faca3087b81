"""One Redis vs a 3-master Redis Cluster: ingest throughput and where the server work lands.

The same producer processes run `emit_many(1000)` for a fixed time against a standalone
redis-server and against a local 3-master cluster (a 3-shard namespace), in alternating rounds.
Reported: events/s, and each node's Redis CPU (INFO `used_cpu_sys` + `used_cpu_user`) over the
round, as a share of all nodes' CPU — the goal is every node within 1.25x of 1/N. A second part
measures expiry lateness on the cluster with 3 sweepers, one of them SIGKILLed half-way.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from distbatch import Batcher
from distbatch.testing import LocalCluster, RedisServer

from .common import payload, private_redis, save, spawn, stop, summary, table, wait_counter

PRODUCERS = 2


def _cpu(ports: list[int]) -> list[float]:
    out = []
    for port in ports:
        info = redis.Redis(port=port).info("cpu")
        out.append(float(info["used_cpu_sys"]) + float(info["used_cpu_user"]))
    return out


def produce(url: str, ns: str, seconds: float) -> None:
    """A producer process: emit_many(1000) for `seconds`, then print how many events it sent."""
    b = Batcher.from_url(url, namespace=ns, handoff=False)
    events = [payload(i, 1000) for i in range(1000)]
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        b.emit_many("src", events)
        sent += len(events)
    print(sent, flush=True)


def _round(url: str, ns: str, ports: list[int], seconds: float) -> dict[str, Any]:
    b = Batcher.from_url(url, namespace=ns, handoff=False)
    b.register("c", version="v1", source="src", handler="bench.handlers.count",
               batch={"count": 100, "window": "1h", "key": "k"})
    before = _cpu(ports)
    t0 = time.perf_counter()
    procs = [spawn("-m", "bench.cluster", "produce", url, ns, str(seconds), url=url, stdout=subprocess.PIPE)
             for _ in range(PRODUCERS)]
    sent = sum(int((p.communicate(timeout=seconds + 120)[0] or b"0").split()[-1]) for p in procs)
    wall = time.perf_counter() - t0
    cpu = [a - b for a, b in zip(_cpu(ports), before, strict=True)]
    b.drop("c@v1")
    total = sum(cpu) or 1.0
    return {"ev_s": sent / wall, "cpu": cpu, "share": [c / total for c in cpu]}


def _lateness(cluster: LocalCluster, queue: RedisServer, batches: int, rate: float) -> dict[str, Any]:
    ns = "clate"
    record = redis.Redis.from_url(queue.url)
    record.delete("bench:late", "bench:events")
    b = Batcher.from_url(cluster.url, namespace=ns, queue_url=queue.url)
    b.register("late", version="v1", source="src", handler="bench.handlers.lateness",
               batch={"count": 10, "window": "100ms", "key": "k"})
    logdir = Path(tempfile.mkdtemp(prefix="bench-clate-"))
    env = {"DISTBATCH_QUEUE_URL": queue.url, "BENCH_RECORD_URL": queue.url}
    worker = spawn("-m", "distbatch.cli", "worker", "--redis-url", cluster.url, "--namespace", ns,
                   "--handlers", "bench.handlers", url=cluster.url, env=env, log=logdir / "w.log")
    sweepers = [spawn("-m", "distbatch.cli", "sweeper", "--redis-url", cluster.url, "--namespace", ns,
                      "--max-sleep", "200ms", url=cluster.url, env=env, log=logdir / f"s{i}.log")
                for i in range(3)]
    try:
        time.sleep(2.0)  # connect, share the shards out
        t0 = time.perf_counter()
        for i in range(batches):
            if i == batches // 2:
                sweepers[0].kill()  # its shards wait for its lease (3 s), then others take them
            b.emit("src", {"k": f"key-{i}", "opened_ms": time.time() * 1000, "window_ms": 100})
            time.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
        wait_counter(record, "bench:events", batches, timeout=60)
        cut = [float(x.split()[0]) for x in record.lrange("bench:late", 0, -1)]
        return summary(cut)
    finally:
        stop([worker, *sweepers])
        b.drop("late@v1")


def run(quick: bool = False) -> dict[str, Any]:
    seconds, rounds = (2.0, 1) if quick else (6.0, 3)
    single: list[dict[str, Any]] = []
    multi: list[dict[str, Any]] = []
    cluster = LocalCluster(3).start()
    try:
        with private_redis() as server:
            ports = [n.port for n in cluster.nodes]
            for r in range(rounds):
                single.append(_round(server.url, f"one{r}", [server.port], seconds))
                multi.append(_round(cluster.url, f"three{r}", ports, seconds))
            late = _lateness(cluster, server, 300 if quick else 3000, 100.0)
    finally:
        cluster.cleanup()
    one = statistics.median(r["ev_s"] for r in single)
    three = statistics.median(r["ev_s"] for r in multi)
    shares = [statistics.median(r["share"][i] for r in multi) for i in range(3)]
    cpu_one = statistics.median(r["cpu"][0] / seconds for r in single)
    cpu_three = [statistics.median(r["cpu"][i] / seconds for r in multi) for i in range(3)]
    rows = [{"setup": "1 standalone node", "ev_s": one, "node_cpu_per_s": f"{cpu_one:.2f}", "share": "1.00"},
            {"setup": "3-master cluster", "ev_s": three,
             "node_cpu_per_s": " ".join(f"{c:.2f}" for c in cpu_three),
             "share": " ".join(f"{s:.2f}" for s in shares)}]
    print(f"{PRODUCERS} producer processes, emit_many(1000), {seconds:g} s rounds, median of {rounds}")
    print(table(rows, ["setup", "ev_s", "node_cpu_per_s", "share"]))
    imbalance = max(shares) * 3
    print(f"cluster / standalone throughput = {three / one:.2f}; busiest node's share = "
          f"{imbalance:.2f}x of 1/3 (goal <= 1.25)")
    print(f"cluster cut lateness with 3 sweepers, one SIGKILLed half-way: p50 {late['p50']:.1f} ms, "
          f"p99 {late['p99']:.1f} ms, max {late['max']:.1f} ms (goal p99 <= 20 ms)")
    result = {"seconds": seconds, "rounds": rounds, "single": single, "cluster": multi,
              "throughput_ratio": three / one, "shares": shares, "imbalance": imbalance,
              "lateness_killed_sweeper": late}
    save("cluster", result, quick)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["produce"]:
        produce(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        run(quick="--quick" in sys.argv)
