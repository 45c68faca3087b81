"""End to end: events/s from the first emit to the last handler call, distbatch vs celery-batches.

Both sides: the same Redis (private, loopback), the same producer loop in this process (one call
per event), the same handler work (count the events, RPUSH their ids), `count`/`flush_every` 100.
With `kill_one`, one worker is SIGKILLed halfway and a replacement started: lost and duplicated
events are counted from the recorded ids.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from distbatch import Batcher

from .common import payload, private_redis, save, spawn, stop, table, wait_counter

NS, KEYS = "e2e", 10


def run_distbatch(url: str, events: int, workers: int, kill_one: bool = False,
                  producer: str = "emit", timeout: float = 180) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    client.delete("bench:ids", "bench:events")
    batcher = Batcher.from_url(url, namespace=NS)
    batcher.register("e2e", version="v1", source="src", handler="bench.handlers.record",
                     batch={"count": 100, "window": "1s", "key": "k"})
    logdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    cli = ("-m", "distbatch.cli")
    worker_args = (*cli, "worker", "--redis-url", url, "--namespace", NS, "--handlers", "bench.handlers",
                   "--lease", "2s")
    procs = [spawn(*worker_args, url=url, log=logdir / f"w{i}.log") for i in range(workers)]
    procs.append(spawn(*cli, "sweeper", "--redis-url", url, "--namespace", NS, "--max-sleep", "200ms",
                       url=url, log=logdir / "sweeper.log"))
    try:
        _wait_workers(client, batcher.keys.queue_name, workers)
        data = [payload(i, KEYS) for i in range(events)]
        t0 = time.perf_counter()
        killed = False
        chunk = 1 if producer == "emit" else 100
        for start in range(0, events, chunk):
            if chunk == 1:
                batcher.emit("src", data[start])
            else:
                batcher.emit_many("src", data[start : start + chunk])
            if kill_one and not killed and start >= events // 2:
                killed = _kill_and_replace(procs, worker_args, url, logdir)
        if kill_one and not killed:
            killed = _kill_and_replace(procs, worker_args, url, logdir)
        t_end = wait_counter(client, "bench:events", events, timeout)
        settle = time.monotonic() + 15  # let redeliveries after a kill land before counting
        while (client.zcard(batcher.keys.ready) or client.zcard(batcher.keys.running)) and (
            time.monotonic() < settle
        ):
            time.sleep(0.05)
        return _tally(client, events, t_end - t0, workers, killed, "distbatch", producer)
    finally:
        stop(procs)
        batcher.drop("e2e@v1")


def _wait_workers(client: redis.Redis, queue: str, n: int) -> None:
    from rq import Worker

    deadline = time.monotonic() + 30
    while len(Worker.all(connection=client)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError("workers did not register")
        time.sleep(0.05)


def _kill_and_replace(procs: list, worker_args: tuple, url: str, logdir: Path) -> bool:
    os.kill(procs[0].pid, signal.SIGKILL)
    procs[0].wait()
    procs.append(spawn(*worker_args, url=url, log=logdir / "replacement.log"))
    return True


def _tally(client: redis.Redis, events: int, seconds: float, workers: int, killed: bool,
           side: str, producer: str) -> dict[str, Any]:
    ids = client.lrange("bench:ids", 0, -1)
    unique = len(set(ids))
    return {"side": side, "producer": producer, "workers": workers, "killed": killed,
            "events_per_s": events / seconds, "seconds": seconds, "delivered": len(ids),
            "lost": events - unique, "duplicated": len(ids) - unique}


def run(quick: bool = False) -> dict[str, Any]:
    events = 10_000 if quick else 100_000
    try:
        from .celery_side import run_celery
    except ImportError as exc:  # the bench extra is not installed
        print(f"celery-batches side skipped: {exc}")
        run_celery = None
    rows: list[dict[str, Any]] = []
    with private_redis() as server:
        # Each distbatch row is followed by its celery-batches row, so a machine that speeds up
        # or slows down during the run shifts both sides of a ratio alike.
        for workers, kill_one in ((1, False), (2, False), (2, True)):
            rows.append(run_distbatch(server.url, events, workers, kill_one=kill_one))
            if workers == 2 and not kill_one:
                rows.append(run_distbatch(server.url, events, 2, producer="emit_many"))
            if run_celery is not None:
                rows.append({"side": "celery-batches", "producer": "delay",
                             **run_celery(server.url, events, workers, kill_one=kill_one)})
    celery = {r["workers"]: r["events_per_s"] for r in rows
              if r["side"] == "celery-batches" and not r["killed"]}
    for r in rows:
        if r["workers"] in celery:
            r["vs_celery"] = r["events_per_s"] / celery[r["workers"]]
    print(table(rows, ["side", "producer", "workers", "killed", "events_per_s", "vs_celery", "seconds",
                       "delivered", "lost", "duplicated"]))
    result = {"events": events, "count": 100, "rows": rows}
    save("e2e", result, quick)
    return result


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
