"""What every benchmark shares: a private Redis, payloads, timing, results on disk."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import redis

from distbatch.testing import RedisServer, env_with_path

RESULTS = Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def private_redis(*extra: str) -> Iterator[RedisServer]:
    server = RedisServer(*extra).start()
    try:
        yield server
    finally:
        server.cleanup()


def payload(i: int, keys: int) -> dict[str, Any]:
    """≈200 bytes of msgpack: a realistic small event."""
    return {
        "id": f"evt-{i}", "k": f"repo-{i % keys}", "action": "merged", "number": i,
        "title": "Fix the frobnicator when the widget is sideways", "user": {"login": "octocat",
        "id": 583231}, "labels": ["bug", "p2"], "body": "x" * 48,
    }


def payload_size(keys: int = 1000) -> int:
    return len(msgpack.packb(payload(12345, keys)))


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "max": max(values, default=0.0),
            "mean": statistics.fmean(values) if values else 0.0, "n": len(values)}


def machine() -> dict[str, Any]:
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "redis": redis_version.split()[2] if redis_version else "?"}


def save(name: str, data: dict[str, Any], quick: bool) -> Path:
    """Full runs land in results/ (the plots read them); --quick smoke runs in results/quick/."""
    folder = RESULTS / "quick" if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "at": time.strftime("%Y-%m-%d %H:%M"), **data},
                               indent=2))
    return path


def spawn(*args: str, url: str, log: Path | None = None, env: dict[str, str] | None = None,
          stdout: Any = None) -> subprocess.Popen[bytes]:
    out = stdout or (open(log, "wb") if log else subprocess.DEVNULL)  # noqa: SIM115
    return subprocess.Popen([sys.executable, *args],
                            env={**env_with_path(), "DISTBATCH_REDIS_URL": url, **(env or {})},
                            stdout=out, stderr=subprocess.STDOUT if stdout is None else None)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_counter(client: redis.Redis, key: str, target: int, timeout: float, stall: float = 20.0) -> float:
    """Poll a counter until it reaches `target`; return the time (perf_counter) it did, or raise."""
    start = last_change = time.perf_counter()
    last = -1
    while True:
        value = int(client.get(key) or 0)
        now = time.perf_counter()
        if value >= target:
            return now
        if value != last:
            last, last_change = value, now
        if now - start > timeout or now - last_change > stall:
            raise TimeoutError(f"{key} stuck at {value}/{target}")
        time.sleep(0.005)


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    body = ["  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths, strict=True)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)
