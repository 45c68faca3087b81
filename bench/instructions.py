"""The emit paths' work in instructions, counted by valgrind's callgrind: the same count for the
same code and inputs whatever else the shared VM is doing, where its seconds drift by ±30% from
one minute to the next (`bench ingest`, `bench emit_path`).

Per event, in the producer process and inside redis-server apart: `emit_many(1000)` against the
batched raw script that msgpack-encodes in its loop (`bench ingest`'s strongest ceiling), and the
single `emit` against the plain EVALSHA of the minimal script (`bench emit_path`'s floor) and the
bare script of `accumulate_one.lua`'s own commands. Each count is the difference between a run
of N calls and one of 5N, so start-up, imports and warm-up cancel out; every run is warmed up
over all 1000 partition keys first.

Instructions are not time: Lua's string hashing and Redis's command dispatch run at other
instructions per cycle than CPython's interpreter, and the round trip's system calls are not
counted at all. The seconds stay in `bench ingest` and `bench emit_path`; this says which side's
work a change moved, exactly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import redis

from distbatch import Batcher
from distbatch.roundtrip import execute_one
from distbatch.testing import RedisServer

from .common import payload, private_redis, save, table
from .emit_path import SAME_COMMANDS
from .ingest import BATCHED, KEYS, MINIMAL

CHUNK = 1000
SIDES = {"emit_many": ("many", "enc"), "emit": ("one", "floor", "bare")}
NAMES = {"many": "distbatch emit_many(1000)", "enc": "batched raw script, msgpack in its loop",
         "one": "distbatch emit", "floor": "plain EVALSHA of the minimal script (floor)",
         "bare": "bare script of accumulate_one's commands"}


def _register(url: str) -> None:
    Batcher.from_url(url, namespace="instr").register(
        "instr", version="v1", source="src", handler="bench.handlers.record",
        batch={"count": 100, "window": "1h", "key": "k"})


def load(mode: str, url: str, calls: int) -> None:
    """One workload, in this process: warm up, then `calls` calls (of CHUNK events for the
    emit_many sides, one event each for the others)."""
    events = [payload(i, KEYS) for i in range(4 * CHUNK)]
    if mode in ("many", "one"):
        b = Batcher.from_url(url, namespace="instr")
        b.bindings()
        if mode == "many":
            chunks = [events[i : i + CHUNK] for i in range(0, len(events), CHUNK)]
            for i in range(3 + calls):
                b.emit_many("src", chunks[i % len(chunks)])
        else:
            for e in events[: KEYS + calls]:
                b.emit("src", e)
        return
    direct = redis.Redis.from_url(url, single_connection_client=True)
    if mode == "enc":
        sha = direct.script_load(BATCHED)
        keys = [f"batched:buf:{i % KEYS}" for i in range(len(events))]
        for i in range(3 + calls):
            start = (i % 4) * CHUNK
            data = [msgpack.packb(e) for e in events[start : start + CHUNK]]
            execute_one(direct, ("EVALSHA", sha, len(data) + 1, *keys[start : start + CHUNK],
                                 "batched:deadlines", *data))
        return
    items = [(f"base:buf:{i % KEYS}", msgpack.packb(e)) for i, e in enumerate(events)]
    if mode == "floor":
        sha = direct.script_load(MINIMAL)
        for key, data in items[: KEYS + calls]:
            execute_one(direct, ("EVALSHA", sha, 2, key, "base:deadlines", data, 1_000_000))
    else:
        sha = direct.script_load(SAME_COMMANDS)
        direct.set("same:regver", "1")
        for n, (key, data) in enumerate(items[: KEYS + calls]):
            execute_one(direct, ("EVALSHA", sha, 5, "same:regver", "same:call", "same:deadlines", key,
                                 "same:stats", data, 1_000_000, f"c{n}"))


def _total(out_file: Path) -> int:
    """The instruction count callgrind wrote (its `summary:` / `totals:` line)."""
    m = re.search(r"^(?:summary|totals): (\d+)", out_file.read_text(), re.MULTILINE)
    if m is None:
        raise RuntimeError(f"no instruction total in {out_file}")
    return int(m.group(1))


def _callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]


def _env(tmp: Path) -> dict[str, str]:
    """The producer's environment: bytecode cached under `tmp` (compiled once, natively, by
    `run`), not compiled again under valgrind in every run; one hash seed, so two runs build
    the same dicts and sets."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent),
               PYTHONPYCACHEPREFIX=str(tmp / "pycache"), PYTHONHASHSEED="0")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _client_run(mode: str, calls: int, tmp: Path) -> int:
    """The producer under callgrind, against a plain redis-server."""
    with private_redis() as server:
        _register(server.url)
        out = tmp / f"client-{mode}-{calls}.out"
        subprocess.run([*_callgrind(out), sys.executable, "-m", "bench.instructions", mode, server.url,
                        str(calls)], check=True, env=_env(tmp), capture_output=True)
        return _total(out)


def _redis_run(mode: str, calls: int, tmp: Path) -> int:
    """redis-server under callgrind, the producer as it is."""
    out = tmp / f"redis-{mode}-{calls}.out"
    server = RedisServer("--hz", "1")  # its timers' work per second of a slow run, kept small
    server.args = [*_callgrind(out), *server.args]
    try:
        server.start()
        _register(server.url)
        load(mode, server.url, calls)
        server.stop()  # callgrind writes its file as the server exits
    finally:
        server.cleanup()
    return _total(out)


def run(quick: bool = False) -> dict[str, Any]:
    """`quick`: emit_many's producer side only, small runs (the smoke test: that it runs)."""
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: skipped (apt-get install valgrind)")
        return {}
    calls = {"emit_many": (1, 5) if quick else (4, 20), "emit": (200, 1000)}  # N, 5N
    plan = {"emit_many": SIDES["emit_many"]} if quick else SIDES
    sides = ("client",) if quick else ("client", "redis")
    counts: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="distbatch-instr-") as folder:
        tmp = Path(folder)
        for modes in plan.values():  # every module each producer imports, compiled once
            for mode in modes:
                with private_redis() as server:
                    _register(server.url)
                    subprocess.run([sys.executable, "-m", "bench.instructions", mode, server.url, "1"],
                                   check=True, env=_env(tmp))
        for call, modes in plan.items():
            n, m = calls[call]
            events = (m - n) * (CHUNK if call == "emit_many" else 1)
            for mode in modes:
                for side in sides:
                    measure = _client_run if side == "client" else _redis_run
                    counts[mode, side] = (measure(mode, m, tmp) - measure(mode, n, tmp)) / events
    rows: list[dict[str, Any]] = []
    for call, (ours, *bases) in plan.items():
        for side in (*sides, "both") if len(sides) > 1 else sides:
            def of(mode: str, side: str = side) -> float:
                return sum(counts[mode, s] for s in sides) if side == "both" else counts[mode, side]
            row: dict[str, Any] = {"call": call, "side": side, "distbatch": of(ours)}
            for base in bases:
                row[base] = of(base)
                row[f"{base}/distbatch"] = of(base) / of(ours)
            rows.append(row)
    print("instructions per event (callgrind; a run of 5N calls less one of N); ratio = baseline / distbatch")
    for call, (ours, *bases) in plan.items():
        print(f"{call}: distbatch = {NAMES[ours]}; " + "; ".join(f"{b} = {NAMES[b]}" for b in bases))
        print(table([r for r in rows if r["call"] == call],
                    ["side", "distbatch", *[c for b in bases for c in (b, f"{b}/distbatch")]]))
    result = {"rows": rows, "counts": {f"{k[0]}:{k[1]}": v for k, v in counts.items()}}
    save("instructions", result, quick)
    return result


if __name__ == "__main__":
    load(sys.argv[1], sys.argv[2], int(sys.argv[3]))
