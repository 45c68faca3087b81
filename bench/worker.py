"""Worker throughput: batches per second one worker process runs, against the physical floor.

The strongest baseline in the same run is a bare loop on the same Redis that takes batch ids with
BLPOP and runs distbatch's own claim + complete scripts for each, with the same handler work (one
INCRBY) — no RQ at all: what one process can do per batch with three round trips. A plain RQ job
doing the same handler work is a second row. Rounds alternate; each figure is the median.

A second part measures cut → handler start at 80% of the measured worker capacity: batches are cut
at that rate by a producer and one worker runs them; p99 must stay within 20 ms once the worker is
warm (its first second of batches, cut while the worker and its handler still open connections
and fill caches, is reported apart: a worker starts once, then runs for days). Its handler does
the capacity's handler work (one INCRBY) and writes each start time to a local file, so the run
does the work per batch the capacity was measured with.
"""

from __future__ import annotations

import bisect
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from distbatch import Batcher
from distbatch.worker import run_worker

from .common import private_redis, save, spawn, stop, summary, table, wait_counter

COUNT = 10


def _cut(url: str, ns: str, jobs: int) -> Batcher:
    producer = Batcher.from_url(url, namespace=ns)
    producer.register("wb", version="v1", source="src", handler="bench.handlers.count",
                      batch={"count": COUNT, "window": "1h"})
    producer.emit_many("src", [{"i": i} for i in range(jobs * COUNT)])  # cuts `jobs` batches
    return producer


def _distbatch_round(url: str, jobs: int, r: int) -> float:
    _cut(url, f"wb{r}", jobs)
    t0 = time.perf_counter()
    run_worker(Batcher.from_url(url, namespace=f"wb{r}"), handlers=["bench.handlers"], burst=True,
               summary_every_s=0)
    return jobs / (time.perf_counter() - t0)


def _bare_round(url: str, jobs: int, r: int) -> float:
    """BLPOP an id, claim it, run the handler work, complete it: the floor for one process."""
    ns = f"bare{r}"
    b = _cut(url, ns, jobs)
    client = redis.Redis.from_url(url)
    ids = [i.decode() for i in client.zrange(b.keys.ready, 0, -1)]
    client.rpush("bench:bare", *ids)
    records = Batcher.from_url(url, namespace=ns, handoff=False).records
    t0 = time.perf_counter()
    while (popped := client.blpop(["bench:bare"], timeout=0.01)) is not None:
        claim = records.claim([popped[1].decode()], 10_000)
        assert claim is not None
        client.incrby("bench:events", len(claim.batch.events))
        records.complete(claim.batch.id, claim.token)
    return jobs / (time.perf_counter() - t0)


def _rq_round(url: str, jobs: int) -> float:
    client = redis.Redis.from_url(url)
    queue = Queue("rq-floor", connection=client, serializer=JSONSerializer)
    queue.enqueue_many([Queue.prepare_data("bench.handlers.rq_count", args=(COUNT,), timeout=-1,
                                           result_ttl=0, failure_ttl=86_400) for _ in range(jobs)])
    t0 = time.perf_counter()
    SimpleWorker([queue], connection=client, serializer=JSONSerializer).work(
        burst=True, logging_level="WARNING")
    return jobs / (time.perf_counter() - t0)


def _start_latency(url: str, rate: float | None, batches: int, warm: int) -> dict[str, Any]:
    """One worker, `warm` + `batches` batches cut at `rate` (None: as fast as the producer can):
    handler start − cut, in ms, of the `batches` after the first `warm` (a worker in its steady
    state; the first ones, cut while it was cold, reported apart), and the rate the worker started
    them at while the producer was emitting."""
    client = redis.Redis.from_url(url)
    client.delete("bench:events")
    b = Batcher.from_url(url, namespace="wlat")
    b.register("wl", version="v1", source="src", handler="bench.handlers.started",
               batch={"count": 1, "window": "1h"})
    logdir = Path(tempfile.mkdtemp(prefix="bench-wlat-"))
    starts = logdir / "starts"
    worker = spawn("-m", "distbatch.cli", "worker", "--redis-url", url, "--namespace", "wlat",
                   "--handlers", "bench.handlers", url=url, log=logdir / "w.log",
                   env={"BENCH_STARTS_FILE": str(starts)})
    stalls_file = logdir / "stalls.json"
    canary = None
    total = warm + batches
    try:
        time.sleep(1.0)
        if rate is not None:
            canary = spawn("-m", "bench.canary", str(total / rate + 3), str(stalls_file), url=url)
        pids = {"worker": worker.pid, "Redis": int(client.info("server")["process_id"]),
                "producer": os.getpid()}
        t0 = time.perf_counter()
        for i in range(total):
            if i == warm:
                cpu0 = {who: _cpu_s(pid) for who, pid in pids.items()}
                steal0, wall0, t1 = _steal_s(), time.time() * 1000, time.perf_counter()
            b.emit("src", {"i": i})
            if rate is not None:
                time.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
        wall1 = time.time() * 1000
        wait_counter(client, "bench:events", total, timeout=120)
        busy_s = time.perf_counter() - t1
        cpu = {who: (_cpu_s(pid) - cpu0[who]) / busy_s for who, pid in pids.items()}
        steal = (_steal_s() - steal0) / busy_s
        lines = [line.split() for line in starts.read_text().splitlines()]
        rows = [(float(cut), float(start)) for i, cut, start in lines if int(i) >= warm]
        cold = [float(start) - float(cut) for i, cut, start in lines if int(i) < warm]
        out = {**summary([start - cut for cut, start in rows]),  # both measured from time 0
               "cold": summary(cold), "started_per_s": started_per_s(rows, wall0, wall1),
               "cores_busy": cpu, "cores_stolen": steal}
        if canary is not None:
            canary.wait(60)
            stalls = [s for s in json.loads(stalls_file.read_text()) if s[0] >= wall0]  # warm, on
            out.update(_machine_stalls(stalls, rows))
        return out
    finally:
        stop([worker, *([canary] if canary else [])])
        b.drop("wl@v1")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _steal_s() -> float:
    """CPU seconds the hypervisor gave to other guests so far, over all cores (/proc/stat's
    `steal`): this VM's cores were runnable but not running."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def started_per_s(rows: list[tuple[float, float]], wall0: float, wall1: float) -> float:
    """Batches started per second while the producer emitted (from `wall0` to `wall1`, ms);
    when it finished before any started (a short run on a slow machine), the worker's own rate
    from `wall0` to its last start, so that the rate is never 0."""
    started = sum(1 for _, start in rows if start <= wall1)
    if started:
        return started / ((wall1 - wall0) / 1000)
    return len(rows) / (max(max(start for _, start in rows) - wall0, 1.0) / 1000)


def _machine_stalls(stalls: list[list[float]], rows: list[tuple[float, ...]]) -> dict[str, Any]:
    """How much of the tail the machine explains: the stalls an idle process beside the run saw
    (`bench.canary`: it woke > 5 ms late from a 1 ms sleep, so no CPU was to be had), and how
    many of the batches over the 20 ms goal started within 100 ms after such a stall began (the
    backlog a stall leaves takes a while to drain at 80% load)."""
    starts = sorted(t for t, _ in stalls)
    late = [(cut, start) for cut, start in rows if start - cut > 20]
    near = 0
    for cut, start in late:
        i = bisect.bisect_right(starts, start)  # the last stall that began before this start
        near += int(i > 0 and start - starts[i - 1] <= 100 + (start - cut))
    return {"machine_stalls": len(stalls), "machine_stall_max_ms": max((d for _, d in stalls), default=0.0),
            "over_goal": len(late), "over_goal_after_a_stall": near}


def run(quick: bool = False) -> dict[str, Any]:
    jobs, rounds = (100, 1) if quick else (1000, 5)
    ours: list[float] = []
    bare: list[float] = []
    floor: list[float] = []
    with private_redis() as server:
        os.environ["DISTBATCH_REDIS_URL"] = server.url  # the handlers' own connection
        client = redis.Redis.from_url(server.url)
        steal0, t0 = _steal_s(), time.perf_counter()
        for r in range(rounds):
            ours.append(_distbatch_round(server.url, jobs, r))
            bare.append(_bare_round(server.url, jobs, r))
            floor.append(_rq_round(server.url, jobs))
        rounds_stolen = (_steal_s() - steal0) / (time.perf_counter() - t0)
        delivered = int(client.get("bench:events") or 0)
        expected = 3 * rounds * jobs * COUNT
        if delivered != expected:
            raise RuntimeError(f"handlers counted {delivered} events, expected {expected}")
        capacity = statistics.median(ours)
        n_late, warm_s = (300, 0.05) if quick else (20_000, 1.0)
        late = _start_latency(server.url, 0.8 * capacity, n_late, int(0.8 * capacity * warm_s))
        # The same worker fed by a producer on the same 2 cores that emits one event per batch as
        # fast as it can: the batches it starts per second meanwhile are what one worker sustains
        # while the producer and Redis share its CPU (a lower bound: at 80% of it the producer
        # takes less CPU than flat out).
        shared = _start_latency(server.url, None, n_late, int(2_000 * warm_s))["started_per_s"]
        late_shared = _start_latency(server.url, 0.8 * shared, n_late, int(0.8 * shared * warm_s))
    rows = [{"side": side, "batches_per_s": statistics.median(v), "ms_per_batch": 1000 / statistics.median(v)}
            for side, v in (("distbatch worker (tickets, claim, lease, handler, complete)", ours),
                            ("bare loop: BLPOP + claim + handler + complete (floor)", bare),
                            ("plain RQ job, same handler work", floor))]
    ratio = statistics.median(o / f for o, f in zip(ours, bare, strict=True))
    rq_ratio = statistics.median(o / f for o, f in zip(ours, floor, strict=True))
    print(f"one worker process, {jobs} batches per round, median of {rounds} alternating rounds")
    print(table(rows, ["side", "batches_per_s", "ms_per_batch"]))
    print(f"distbatch / bare loop = {ratio:.2f} (goal >= 0.75); distbatch / plain RQ = {rq_ratio:.2f}")
    print(f"cores stolen by the hypervisor during these rounds: {rounds_stolen:.2f}")
    for what, cap, lat in (("the burst capacity above", capacity, late),
                           ("the rate sustained beside a flat-out producer", shared, late_shared)):
        print(f"cut -> handler start at 80% of {what} ({cap:.0f}/s -> {0.8 * cap:.0f} batches/s, "
              f"{n_late} batches after {warm_s:g} s to warm up): p50 {lat['p50']:.1f} ms, "
              f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms (goal p99 <= 20 ms)")
        cold = lat["cold"]
        print(f"  the first {warm_s:g} s, from a cold worker ({cold['n']:.0f} batches): "
              f"p50 {cold['p50']:.1f} ms, p99 {cold['p99']:.1f} ms, max {cold['max']:.1f} ms")
        busy = lat["cores_busy"]
        print("  cores busy from the first emit to the last handler start: " +
              ", ".join(f"{who} {v:.2f}" for who, v in busy.items()) + f"; {sum(busy.values()):.2f} of "
              f"{os.cpu_count()}; stolen by the hypervisor meanwhile: {lat['cores_stolen']:.2f} cores")
        print(f"  meanwhile an idle process beside it stalled {lat['machine_stalls']} times (woke > 5 ms "
              f"late; worst {lat['machine_stall_max_ms']:.0f} ms); of the {lat['over_goal']} batches "
              f"over 20 ms, {lat['over_goal_after_a_stall']} started within 100 ms (plus their wait) "
              "after such a stall began")
    result = {"jobs": jobs, "rounds": rounds, "rows": rows, "ratio_vs_bare": ratio, "ratio_vs_rq": rq_ratio,
              "cores_stolen_in_rounds": rounds_stolen,
              "start_latency_at_80pct": late, "sustained_with_producer": shared,
              "start_latency_at_80pct_sustained": late_shared}
    save("worker", result, quick)
    return result


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
