"""Start and stop the real processes the distributed tests need."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from .handlers import DELIVERED
from .redis_server import env_with_path


class Procs:
    def __init__(self, url: str, namespace: str, logdir: Path, env: dict[str, str] | None = None) -> None:
        self.url, self.namespace, self.logdir = url, namespace, logdir
        self.env = env or {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, *args: str, env: dict[str, str] | None = None, name: str = "p"
    ) -> subprocess.Popen[bytes]:
        full_env = {**env_with_path(), "DISTBATCH_REDIS_URL": self.url, **self.env, **(env or {})}
        with open(self.logdir / f"{name}-{len(self.procs)}.log", "wb") as log:  # the child keeps its own
            p = subprocess.Popen([sys.executable, *args], env=full_env, stdout=log,
                                 stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def worker(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.spawn("-m", "distbatch.cli", "worker", "--redis-url", self.url, "--namespace",
                          self.namespace, "--handlers", "tests.handlers", *extra, env=env, name="worker")

    def sweeper(self, *extra: str) -> subprocess.Popen[bytes]:
        return self.spawn("-m", "distbatch.cli", "sweeper", "--redis-url", self.url, "--namespace",
                          self.namespace, "--max-sleep", "200ms", *extra, name="sweeper")

    def producer(self, pid: int, n: int, mode: str = "dispatch", keys: int = 50,
                 source: str = "s") -> subprocess.Popen[bytes]:
        return self.spawn("-m", "tests.producer", self.url, self.namespace, source, str(pid), str(n),
                          mode, str(keys), name="producer")

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def logs(self) -> str:
        return "\n".join(f"== {f.name}\n{f.read_text(errors='replace')[-3000:]}"
                         for f in sorted(self.logdir.glob("*.log")))


def delivered(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.lrange(DELIVERED, 0, -1)]


def wait_for(cond: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs()}")
        time.sleep(0.05)
