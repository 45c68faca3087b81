"""HTTP ingest (`distbatch serve`, one uvicorn process) against `emit_many` of the same events in
the same run.

Load: `wrk` (a C load generator, so the client's own cost stays out of the figure) with 16
connections posting one event each, and 4 connections posting 1,000-event JSON arrays (the full
per-event results, and `?results=cuts`). Without wrk, httpx client processes do the same (their
CPU then competes with the server's on a small machine; the table says which client ran).
Baseline, alternating with each HTTP run: 4 processes calling `emit_many(1000)` directly.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from distbatch import Batcher
from distbatch.testing import env_with_path, free_port

from .common import payload, private_redis, save, table

KEYS, COUNT, TOKEN, PROCS = 1000, 100, "bench-token-0123456789abcdef", 4
PATH = "/v1/sources/src/events"


def _wrk_script(folder: Path, body: bytes, query: str) -> Path:
    (folder / "body.json").write_bytes(body)
    script = folder / f"post{len(body)}{query.replace('=', '')}.lua"
    script.write_text(
        f'local f = io.open("{folder / "body.json"}", "rb")\n'
        'wrk.method = "POST"\nwrk.body = f:read("*a")\nf:close()\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {TOKEN}"\n')
    return script


def _wrk(base: str, body: bytes, per_request: int, connections: int, seconds: float, query: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        script = _wrk_script(Path(tmp), body, query)
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                              "--timeout", "30s", "-s", str(script),
                              f"{base}{PATH}{'?' + query if query else ''}"],
                             capture_output=True, text=True, timeout=seconds + 60).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failed requests:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rate * per_request


def _httpx(base: str, body: bytes, n_requests: int, seed: int, barrier: Any, out: Any, query: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
        barrier.wait()
        t0 = time.perf_counter()
        for _ in range(n_requests):
            r = c.post(f"{PATH}{'?' + query if query else ''}", content=body)
            assert r.status_code == 200, r.text
        out.put(time.perf_counter() - t0)


def _direct(url: str, n: int, seed: int, barrier: Any, out: Any) -> None:
    events = [payload(seed * n + i, KEYS) for i in range(n)]
    b = Batcher.from_url(url, namespace="http", handoff=False)
    b.emit("src", events[0])
    barrier.wait()
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        b.emit_many("src", events[start : start + 1000])
    out.put(time.perf_counter() - t0)


def _procs(target: Any, args: tuple[Any, ...], procs: int) -> list[float]:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=target, args=(*args[:2], p, barrier, out, *args[2:])) for p in range(procs)]
    for p in ps:
        p.start()
    times = [out.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    return times


def _wait_up(base: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{base}/openapi.json")
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run(quick: bool = False) -> dict[str, Any]:
    rounds, seconds, n_direct = (1, 1.0, 4_000) if quick else (3, 8.0, 40_000)
    use_wrk = shutil.which("wrk") is not None
    one = json.dumps(payload(7, KEYS)).encode()
    thousand = json.dumps([payload(i, KEYS) for i in range(1000)]).encode()
    cases = [("1 event per POST", one, 1, 16, ""), ("1,000-event array", thousand, 1000, PROCS, ""),
             ("1,000-event array, ?results=cuts", thousand, 1000, PROCS, "results=cuts")]
    rows = []
    with private_redis() as server:
        Batcher.from_url(server.url, namespace="http", handoff=False).register(
            "h", version="v1", source="src", handler="bench.handlers.record",
            batch={"count": COUNT, "window": "1h", "key": "k"})
        port = free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "distbatch.cli", "serve", "--redis-url", server.url, "--namespace", "http",
             "--port", str(port)], env={**env_with_path(), "DISTBATCH_API_TOKENS": TOKEN},
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_up(base)
            for name, body, per_request, connections, query in cases:
                http_rates, direct_rates = [], []
                for _ in range(rounds):  # alternate, so drift hits both sides alike
                    if use_wrk:
                        http_rates.append(_wrk(base, body, per_request, connections, seconds, query))
                    else:
                        n_req = max(1, (200 if per_request == 1 else 2) * (1 if quick else 10))
                        times = _procs(_httpx, (base, body, n_req, query), PROCS)
                        http_rates.append(n_req * per_request * PROCS / max(times))
                    times = _procs(_direct, (server.url, n_direct // PROCS), PROCS)
                    direct_rates.append(n_direct / max(times))
                rows.append({"http_request": name, "client": "wrk" if use_wrk else "httpx",
                             "connections": connections if use_wrk else PROCS,
                             "http_ev_s": statistics.median(http_rates),
                             "emit_many_ev_s": statistics.median(direct_rates),
                             "ratio": statistics.median(h / d for h, d in zip(http_rates, direct_rates,
                                                                            strict=True))})
        finally:
            serve.terminate()
            serve.wait(10)
    print(f"events/s, median of {rounds} alternating rounds; one `distbatch serve` process; "
          f"baseline: {PROCS} processes calling emit_many(1000) directly")
    print(table(rows, ["http_request", "client", "connections", "http_ev_s", "emit_many_ev_s", "ratio"]))
    result = {"rounds": rounds, "rows": rows}
    save("http", result, quick)
    return result


if __name__ == "__main__":
    run()
