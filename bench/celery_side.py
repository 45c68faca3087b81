"""Run the celery-batches baseline of the end-to-end benchmark on a given (private) Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from distbatch.testing import env_with_path

from .celery_app import app, handle  # ImportError without the bench extra: e2e skips this side
from .common import payload, stop, wait_counter

E2E_KEYS = 10


def _worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool=solo",
         "--concurrency=1", "-Q", "bench-celery", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-l", "WARNING"],
        env={**env_with_path(), "BENCH_REDIS_URL": url, "DISTBATCH_REDIS_URL": url},
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )


def run_celery(url: str, events: int, workers: int, kill_one: bool = False,
               timeout: float = 180) -> dict[str, Any]:
    os.environ["BENCH_REDIS_URL"] = url
    app.conf.broker_url = url
    client = redis.Redis.from_url(url)
    client.delete("bench:ids", "bench:events")
    logdir = Path(tempfile.mkdtemp(prefix="bench-celery-"))
    procs = [_worker(url, logdir / f"w{i}.log") for i in range(workers)]
    try:
        deadline = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5) or []) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError("celery workers did not answer ping")
        data = [payload(i, E2E_KEYS) for i in range(events)]
        killed = False
        t0 = time.perf_counter()
        for i, p in enumerate(data):
            handle.delay(p)
            if kill_one and not killed and i >= events // 2:
                os.kill(procs[0].pid, signal.SIGKILL)
                procs[0].wait()
                procs.append(_worker(url, logdir / "replacement.log"))
                killed = True
        try:
            t_end = wait_counter(client, "bench:events", events, timeout, stall=15)
        except TimeoutError:
            if not kill_one:
                raise
            t_end = time.perf_counter()
        ids = client.lrange("bench:ids", 0, -1)
        unique = len(set(ids))
        return {"workers": workers, "killed": killed, "events_per_s": events / (t_end - t0),
                "seconds": t_end - t0, "delivered": len(ids), "lost": events - unique,
                "duplicated": len(ids) - unique}
    finally:
        stop(procs)
        client.delete("celery", "_kombu.binding.celery", "bench-celery")


if __name__ == "__main__":
    from .common import private_redis

    with private_redis() as server:
        for w in (1, 2):
            print(run_celery(server.url, 5000, w))
        print(run_celery(server.url, 5000, 2, kill_one=True))
