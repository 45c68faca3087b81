"""Chaos soak: real producers, workers and sweepers under SIGKILL, SIGSTOP and a Redis restart.

`python3 -m bench chaos --minutes N` (or `--quick`, about 40 s in all). Everything runs on loopback:

- a private redis-server under test (AOF, `appendfsync always`), restarted once mid-run, and a
  second private redis-server that only records what producers acknowledged and what handlers ran
  (never restarted: it is the ground truth);
- two bindings on one source, keyed on `k` (200 keys), count 10, window 300 ms: one
  `fire_partial`, one `discard`; 20 attempts, so faults never use a batch's tries up;
- 3 workers (lease 1 s), 2 sweepers (max sleep 200 ms), 3 producers (`bench.chaos_producer`);
- every 2-4 s a random process among them is SIGKILLed (and replaced) or SIGSTOPped for 1.5-3 s,
  longer than the lease; then producers stop and the rest runs until the system is drained.

Checked from the recordings (see `figures`): no acknowledged event lost (for the discard binding,
discarded counts as accounted for), no event in two different batches of a binding, no batch above
count, no two runs of one batch at the same time except when one of them was SIGSTOPped meanwhile,
and how long a killed or paused worker's batch took to run again elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from distbatch import Batcher
from distbatch.keys import Keys
from distbatch.testing import RedisServer, env_with_path

from .chaos_handlers import ROWS, STARTS
from .chaos_producer import ACKED, FAILED, UNCERTAIN
from .common import pct, save

NS = "chaos"
SOURCE = "chaos.src"
PARTIAL = "chaos-partial@v1"
DISCARD = "chaos-discard@v1"
COUNT, KEYS, WINDOW, LEASE = 10, 200, "300ms", "1s"
FLEET = {"worker": 3, "sweeper": 2, "producer": 3}
PRODUCER_RATE = 25.0
"""Events per second per producer. ~75 events/s in all make ~50 batches/s (most windows close
with 1-2 events): 3 workers at 20-50 ms a batch stay about 60% busy, on 2 cores."""
ALLOWED_LEFTOVERS = {"bindings", "regver", "stats", "batchseq", "dropped"}
_LEASE_LOST = re.compile(r"^(?P<when>\S+ \S+),(?P<ms>\d+) ERROR \S+ lease_lost batch=(?P<batch>\d+)", re.M)
LOG_MARKERS = ("lease_lost", "batch_reclaimed", "handoff_failed", "sweeper_step_failed", "emit_error",
               "emit_failed", "Traceback")


@dataclass(frozen=True, slots=True)
class Fault:
    """One thing done to the system: kill, stop (t_start..t_end), crash (found dead), restart."""

    role: str
    pid: int
    action: str
    t_start: float
    t_end: float


@dataclass(slots=True)
class Slot:
    role: str
    index: int
    name: str
    proc: subprocess.Popen[bytes]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the harness dies, so nothing outlives a crash."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Fleet:
    """The soak's processes by role; a killed or crashed one is replaced in the same slot."""

    def __init__(self, url: str, record_url: str, logdir: Path, deadline: float, rate: float) -> None:
        self.url, self.logdir, self.deadline, self.rate = url, logdir, deadline, rate
        self.env = {**env_with_path(), "CHAOS_RECORD_URL": record_url}
        self.stop_file = logdir / "stop-producers"
        self.slots: list[Slot] = []
        self.every: list[subprocess.Popen[bytes]] = []
        self._generation = itertools.count()
        self.pids: dict[str, int] = {}  # process name (its log file) -> pid

    def _command(self, role: str, name: str) -> list[str]:
        common = ["--redis-url", self.url, "--namespace", NS]
        if role == "worker":
            return ["-m", "distbatch.cli", "worker", *common, "--handlers", "bench.chaos_handlers",
                    "--lease", LEASE]
        if role == "sweeper":
            return ["-m", "distbatch.cli", "sweeper", *common, "--max-sleep", "200ms"]
        return ["-m", "bench.chaos_producer", "--url", self.url, "--namespace", NS, "--source", SOURCE,
                "--id", name, "--keys", str(KEYS), "--rate", str(self.rate),
                "--stop-file", str(self.stop_file), "--deadline", str(self.deadline)]

    def spawn(self, role: str, index: int) -> Slot:
        name = f"{role[0]}{index}g{next(self._generation)}"
        with open(self.logdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, *self._command(role, name)], env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        slot = Slot(role, index, name, proc)
        self.slots.append(slot)
        self.every.append(proc)
        self.pids[name] = proc.pid
        return slot

    def start(self, roles: Iterable[str]) -> None:
        for role in roles:
            for i in range(FLEET[role]):
                self.spawn(role, i)

    def live(self, roles: Iterable[str] = tuple(FLEET)) -> list[Slot]:
        wanted = set(roles)
        return [s for s in self.slots if s.role in wanted]

    def replace(self, slot: Slot) -> Slot:
        self.slots.remove(slot)
        return self.spawn(slot.role, slot.index)

    def reap(self, roles: Iterable[str] = tuple(FLEET)) -> list[Fault]:
        """Replace processes that exited on their own; each is reported as a crash."""
        crashed = []
        for slot in self.live(roles):
            if slot.proc.poll() is not None:
                now = time.time()
                crashed.append(Fault(slot.role, slot.proc.pid, f"crash(rc={slot.proc.returncode})", now, now))
                self.replace(slot)
        return crashed

    def stop(self, roles: Iterable[str], grace: float = 10.0) -> None:
        """SIGTERM (warm: a worker finishes the batch in hand), SIGKILL what is left after `grace`."""
        slots = self.live(roles)
        for s in slots:
            with contextlib.suppress(ProcessLookupError):
                s.proc.send_signal(signal.SIGCONT)
                s.proc.terminate()
        end = time.monotonic() + grace
        for s in slots:
            try:
                s.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
            self.slots.remove(s)

    def kill_all(self) -> None:
        for p in self.every:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()

    def lease_lost_lines(self) -> list[tuple[str, int, str, float]]:
        """(process name, pid, batch id, time logged) of every `lease_lost` a worker logged."""
        out = []
        for name, pid in self.pids.items():
            path = self.logdir / f"{name}.log"
            for m in _LEASE_LOST.finditer(path.read_text(errors="replace") if path.exists() else ""):
                logged = time.mktime(time.strptime(m["when"], "%Y-%m-%d %H:%M:%S")) + int(m["ms"]) / 1000
                out.append((name, pid, m["batch"], logged))
        return out

    def log_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for f in self.logdir.glob("*.log"):
            text = f.read_text(errors="replace")
            for marker in LOG_MARKERS:
                counts[marker] += text.count(marker)
        return dict(counts)


class Chaos:
    """Every 2-4 s: SIGKILL (and replace) or SIGSTOP for 1.5-3 s one random process; once, restart
    the Redis under test. The first two strikes are a worker kill and a worker stop, so even a short
    run measures both."""

    def __init__(self, fleet: Fleet, sut: RedisServer, rng: random.Random, redis_kill: bool = False) -> None:
        self.fleet, self.sut, self.rng, self.redis_kill = fleet, sut, rng, redis_kill
        self.faults: list[Fault] = []
        self.plan: list[tuple[str | None, str]] = [("worker", "kill"), ("worker", "stop")]

    def run(self, until: float, restart_at: float) -> None:
        next_strike = time.time() + self.rng.uniform(2, 4)
        restarted = False
        while time.time() < until:
            self.faults += self.fleet.reap()
            if not restarted and time.time() >= restart_at:
                self.restart_redis()
                restarted = True
            elif time.time() >= next_strike:
                self.strike()
                next_strike = time.time() + self.rng.uniform(2, 4)
            time.sleep(0.05)

    def strike(self) -> None:
        role, action = self.plan.pop(0) if self.plan else (None, self.rng.choice(["kill", "stop"]))
        slot = self.rng.choice(self.fleet.live([role] if role else FLEET))
        if action == "kill":
            self.kill(slot)
        else:
            self.pause(slot, self.rng.uniform(1.5, 3.0))

    def kill(self, slot: Slot) -> None:
        t = time.time()
        slot.proc.kill()
        slot.proc.wait()
        self.faults.append(Fault(slot.role, slot.proc.pid, "kill", t, t))
        self.fleet.replace(slot)

    def pause(self, slot: Slot, seconds: float) -> None:
        t = time.time()
        slot.proc.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        slot.proc.send_signal(signal.SIGCONT)
        self.faults.append(Fault(slot.role, slot.proc.pid, "stop", t, time.time()))

    def restart_redis(self) -> None:
        t = time.time()
        pid = self.sut.proc.pid if self.sut.proc else 0
        self.sut.stop(kill=self.redis_kill)
        self.sut.start()
        action = "kill+restart" if self.redis_kill else "restart"
        self.faults.append(Fault("redis", pid, action, t, time.time()))


def register(url: str) -> Batcher:
    batcher = Batcher.from_url(url, namespace=NS)
    retry = {"attempts": 20, "backoff": "50ms"}
    for name, action in ((PARTIAL, "fire_partial"), (DISCARD, "discard")):
        binding_id, version = name.split("@")
        batcher.register(binding_id, version=version, source=SOURCE, handler="bench.chaos_handlers.record",
                         batch={"count": COUNT, "window": WINDOW, "key": "k", "expire_action": action},
                         retry=retry)
    return batcher


def wait_workers(client: redis.Redis, n: int, timeout: float = 30.0) -> None:
    from rq import Worker

    deadline = time.monotonic() + timeout
    while len(Worker.all(connection=client)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} workers did not register within {timeout}s")
        time.sleep(0.1)


def backlog(client: redis.Redis, keys: Keys) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    for k in (keys.deadlines, keys.ready, keys.running, keys.delayed, keys.dead):
        pipe.zcard(k)
    pipe.llen(f"rq:queue:{keys.queue_name}")
    names = ("open_buffers", "ready", "running", "delayed", "dead", "queued_tickets")
    return dict(zip(names, (int(v) for v in pipe.execute()), strict=True))


def drain(client: redis.Redis, fleet: Fleet, timeout: float) -> dict[str, Any]:
    """Keep workers and sweepers up until nothing is open, ready, running, delayed or queued
    (seen twice in a row), or `timeout`."""
    keys = Keys(NS)
    t0 = time.monotonic()
    quiet = 0
    state: dict[str, int] = {}
    crashes: list[Fault] = []
    while time.monotonic() - t0 < timeout:
        crashes += fleet.reap(("worker", "sweeper"))
        try:
            state = backlog(client, keys)
        except redis.RedisError:
            quiet = 0
        else:
            busy = sum(v for k, v in state.items() if k != "dead")
            quiet = quiet + 1 if busy == 0 else 0
            if quiet >= 2:
                break
        time.sleep(0.25)
    return {"drained": quiet >= 2, "seconds": time.monotonic() - t0, "state": state, "crashes": crashes}


# analysis --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """One handler run of one claim of a batch: its start row, completed by its end row."""

    batch: str
    binding: str
    attempt: int
    pid: int
    start: float
    end: float | None = None
    events: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def claim(self) -> tuple[str, int, int]:
        return (self.batch, self.pid, self.attempt)


@dataclass(slots=True)
class Recorded:
    acked: set[str]
    uncertain: set[str]
    failed: int
    runs: list[Run]
    ends_without_start: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def load(rec: redis.Redis) -> Recorded:
    runs: dict[tuple[str, int, int], Run] = {}
    for raw in rec.lrange(STARTS, 0, -1):
        s = json.loads(raw)
        run = Run(s["batch"], s["binding"], s["attempt"], s["pid"], s["start"])
        runs[run.claim] = run
    orphans = 0
    for raw in rec.lrange(ROWS, 0, -1):
        r = json.loads(raw)
        key = (r["batch"], r["pid"], r["attempt"])
        if key not in runs:
            orphans += 1
            runs[key] = Run(r["batch"], r["binding"], r["attempt"], r["pid"], r["start"])
        run = runs[key]
        run.end, run.events, run.reason = r["end"], r["events"], r["reason"]
    return Recorded(
        acked={_text(x) for x in rec.lrange(ACKED, 0, -1)},
        uncertain={_text(x) for x in rec.lrange(UNCERTAIN, 0, -1)},
        failed=int(rec.get(FAILED) or 0),
        runs=sorted(runs.values(), key=lambda r: r.start),
        ends_without_start=orphans,
    )


def delivery(data: Recorded, stats: dict[str, int]) -> dict[str, Any]:
    """Acked events per binding: delivered, or (discard binding) discarded; the rest is lost.

    Discards are counted, not named, so for the discard binding `lost` is a lower bound per id
    (acked and undelivered beyond the discarded count), and `unaccounted` checks the counters:
    events stored (events_in) - distinct events delivered - discarded, over all stored events.
    """
    delivered: dict[str, set[str]] = {PARTIAL: set(), DISCARD: set()}
    for run in data.runs:
        delivered.setdefault(run.binding, set()).update(run.events)
    discarded = stats.get(f"events_discarded:{DISCARD}", 0)
    missing = {b: sorted(data.acked - delivered[b]) for b in (PARTIAL, DISCARD)}
    lost = {PARTIAL: len(missing[PARTIAL]), DISCARD: max(0, len(missing[DISCARD]) - discarded)}
    events_in = {b: stats.get(f"events_in:{b}", 0) for b in (PARTIAL, DISCARD)}
    return {
        "acked": len(data.acked),
        "uncertain": len(data.uncertain),
        "failed_before_send": data.failed,
        "delivered": {b: len(data.acked & delivered[b]) for b in (PARTIAL, DISCARD)},
        "delivered_unacked": len((delivered[PARTIAL] | delivered[DISCARD]) - data.acked),
        "discarded": discarded,
        "acked_undelivered_discard_binding": len(missing[DISCARD]),
        "lost": sum(lost.values()),
        "lost_by_binding": lost,
        "lost_sample": missing[PARTIAL][:10],
        "events_in": events_in,
        "unaccounted": {b: events_in[b] - len(delivered[b]) - (discarded if b == DISCARD else 0)
                        for b in (PARTIAL, DISCARD)},
    }


def duplicates(runs: list[Run]) -> dict[str, Any]:
    """An event in two different batches of one binding; re-runs of one batch are counted apart."""
    batches_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    rows_of: Counter[str] = Counter()
    kinds: dict[str, str] = {}
    for run in runs:
        if run.end is None:
            continue
        rows_of[run.batch] += 1
        kinds[run.batch] = f"{run.binding}:{run.reason}"
        for e in run.events:
            batches_of[(run.binding, e)].add(run.batch)
    dups = {k: sorted(v) for k, v in batches_of.items() if len(v) > 1}
    above = [r for r in runs if len(r.events) > COUNT]
    return {
        "duplicates": len(dups),
        "duplicate_sample": [{"binding": b, "event": e, "batches": v}
                             for (b, e), v in list(dups.items())[:10]],
        "batches": len(rows_of),
        "batches_by_kind": dict(sorted(Counter(kinds.values()).items())),
        "reruns": {"batches": sum(1 for n in rows_of.values() if n > 1),
                   "extra_runs": sum(n - 1 for n in rows_of.values())},
        "above_count": len(above),
        "above_count_sample": [asdict(r) for r in above[:5]],
    }


def _interval(run: Run, killed_at: dict[int, float]) -> tuple[float, float] | None:
    if run.end is not None:
        return run.start, run.end
    t = killed_at.get(run.pid)
    return (run.start, t) if t is not None and t >= run.start else None


def _stopped(pid: int, a: float, b: float, stops: dict[int, list[tuple[float, float]]]) -> bool:
    return any(s < b and a < e for s, e in stops.get(pid, ()))


def concurrency(runs: list[Run], faults: list[Fault]) -> dict[str, Any]:
    """Two runs of one batch whose [start, end] overlap; excused when either run's worker was
    SIGSTOPped inside its own interval (a paused handler resumes; fencing stops only its writes).
    A killed run ends at its kill."""
    killed_at = {f.pid: f.t_start for f in faults if f.role == "worker" and f.action != "stop"}
    stops: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for f in faults:
        if f.action == "stop":
            stops[f.pid].append((f.t_start, f.t_end))
    by_batch: dict[str, list[tuple[Run, tuple[float, float]]]] = defaultdict(list)
    open_runs = 0
    for run in runs:
        iv = _interval(run, killed_at)
        if iv is None:
            open_runs += 1
        else:
            by_batch[run.batch].append((run, iv))
    raw = excused = 0
    violations = []
    for pairs in by_batch.values():
        for (a, (a0, a1)), (b, (b0, b1)) in itertools.combinations(pairs, 2):
            if not (a0 < b1 and b0 < a1):
                continue
            raw += 1
            if _stopped(a.pid, a0, a1, stops) or _stopped(b.pid, b0, b1, stops):
                excused += 1
                continue
            violations.append({"a": asdict(a), "b": asdict(b), "a_recent_stop": _recent_stop(a, stops),
                               "b_recent_stop": _recent_stop(b, stops)})
    return {"concurrent_raw": raw, "concurrent_paused": excused, "concurrent": len(violations),
            "concurrent_sample": violations[:5], "unfinished_runs": open_runs}


def _recent_stop(run: Run, stops: dict[int, list[tuple[float, float]]]) -> list[float] | None:
    """A SIGSTOP of the run's worker that ended shortly (< 5 s) before the run started, if any."""
    for s, e in stops.get(run.pid, ()):
        if e <= run.start < e + 5:
            return [s, e]
    return None


def rerun_delays(runs: list[Run], faults: list[Fault]) -> dict[str, Any]:
    """For each worker SIGKILL/SIGSTOP at t: the batches the victim was running at t, and how long
    until a later claim of each (another worker, or the victim after it resumed) started."""
    by_batch: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_batch[run.batch].append(run)
    delays: list[float] = []
    never: list[dict[str, Any]] = []
    for f in faults:
        if f.role != "worker" or f.action not in ("kill", "stop"):
            continue
        t = f.t_start
        for run in runs:
            if run.pid != f.pid or run.start >= t or (run.end is not None and run.end <= t):
                continue
            later = [r.start for r in by_batch[run.batch] if r.attempt > run.attempt and r.start > t]
            if later:
                delays.append(min(later) - t)
            else:
                never.append({"fault": asdict(f), "run": asdict(run)})
    return {"inflight_hit": len(delays) + len(never), "rerun_s_max": max(delays, default=0.0),
            "rerun_s_p99": pct(delays, 0.99), "rerun_s": [round(d, 3) for d in delays],
            "not_rerun": never[:5], "not_rerun_count": len(never)}


def lease_lost(lines: list[tuple[str, int, str, float]], runs: list[Run],
               faults: list[Fault]) -> dict[str, Any]:
    """Each `lease_lost` a worker logged, with every run of that batch. `spurious`: the batch ran
    once, by that very worker, which finished it before the line (log times are truncated to the
    ms) and was not paused meanwhile: the lease was not lost, the batch was delivered."""
    by_batch: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_batch[run.batch].append(run)
    stops: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for f in faults:
        if f.action == "stop":
            stops[f.pid].append((f.t_start, f.t_end))
    rows = []
    for name, pid, batch, logged in lines:
        rs = by_batch.get(batch, [])
        only = rs[0] if len(rs) == 1 and rs[0].pid == pid else None
        spurious = (only is not None and only.end is not None and only.end <= logged + 0.002
                    and not _stopped(pid, only.start, logged + 0.002, stops))
        rows.append({"worker": name, "pid": pid, "batch": batch, "logged_at": round(logged, 3),
                     "spurious": spurious,
                     "runs": [{"pid": r.pid, "attempt": r.attempt, "start": round(r.start, 3),
                               "end": None if r.end is None else round(r.end, 3)} for r in rs]})
    return {"lease_lost": len(rows), "lease_lost_spurious": sum(r["spurious"] for r in rows),
            "lease_lost_detail": rows[:20]}


def leftover_keys(client: redis.Redis) -> list[str]:
    """Keys of the namespace still there after the drain, other than registry, counters, call ids."""
    prefix = "{" + NS + "}:"
    out = []
    for raw in client.scan_iter(match=prefix.replace("{", "\\{").replace("}", "\\}") + "*", count=1000):
        name = _text(raw)
        rest = name[len(prefix):]
        if rest in ALLOWED_LEFTOVERS or rest.startswith("call:"):
            continue
        out.append(name)
    return sorted(out)


def figures(data: Recorded, stats: dict[str, int], faults: list[Fault]) -> dict[str, Any]:
    kinds = Counter(f"{f.role}:{f.action}" for f in faults)
    return {
        **delivery(data, stats),
        **duplicates(data.runs),
        **concurrency(data.runs, faults),
        **rerun_delays(data.runs, faults),
        "faults": dict(sorted(kinds.items())),
        "ends_without_start": data.ends_without_start,
    }


def violations(result: dict[str, Any]) -> list[str]:
    """The invariants that did not hold (empty when the run is clean)."""
    checks = {
        "lost": result["lost"] == 0,
        "duplicates": result["duplicates"] == 0,
        "above_count": result["above_count"] == 0,
        "concurrent": result["concurrent"] == 0,
        "drained": result["drain"]["drained"],
        "unaccounted": not any(result["unaccounted"].values()),
    }
    return [name for name, ok in checks.items() if not ok]


# the soak ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    sut = RedisServer("--appendfsync", "always", appendonly=True)
    rec = RedisServer()
    try:
        yield sut.start(), rec.start()
    finally:
        sut.cleanup()
        rec.cleanup()


def soak(seconds: float, *, seed: int = 1, rate: float = PRODUCER_RATE, drain_timeout: float = 60.0,
         logdir: Path | None = None, redis_kill: bool = False) -> dict[str, Any]:
    """Run producers, workers and sweepers under faults for `seconds`, drain, and measure.

    The Redis under test is restarted with SIGTERM (`redis_kill`: SIGKILL, no shutdown flush)."""
    rng = random.Random(seed)
    logdir = logdir or Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    with servers() as (sut, rec_server):
        client, rec = redis.Redis.from_url(sut.url), redis.Redis.from_url(rec_server.url)
        register(sut.url)
        fleet = Fleet(sut.url, rec_server.url, logdir, time.time() + seconds + 120, rate)
        chaos = Chaos(fleet, sut, rng, redis_kill)
        try:
            fleet.start(["worker", "sweeper"])
            wait_workers(client, FLEET["worker"])
            fleet.start(["producer"])
            t0 = time.time()
            chaos.run(until=t0 + seconds, restart_at=t0 + seconds * rng.uniform(0.35, 0.55))
            fleet.stop_file.touch()
            fleet.stop(["producer"], grace=5.0)
            chaos_s = time.time() - t0
            drained = drain(client, fleet, drain_timeout)
            fleet.stop(["worker", "sweeper"])
        finally:
            fleet.kill_all()
        faults = chaos.faults + drained.pop("crashes")
        stats = {_text(k): int(v) for k, v in client.hgetall(Keys(NS).stats).items()}
        data = load(rec)
        result = {**figures(data, stats, faults), **lease_lost(fleet.lease_lost_lines(), data.runs, faults)}
        result.update(seconds=chaos_s, seed=seed, drain=drained, leftover_keys=leftover_keys(client),
                      logs=fleet.log_counts(), logdir=str(logdir), stats=stats,
                      fault_log=[asdict(f) for f in faults])
    result["violations"] = violations(result)
    return result


def report(r: dict[str, Any]) -> None:
    d = r["drain"]
    print(f"chaos phase {r['seconds']:.1f}s; faults: {r['faults']}")
    print(f"drain: {'drained' if d['drained'] else 'NOT drained'} in {d['seconds']:.1f}s, state {d['state']}")
    print(f"events acknowledged {r['acked']:,} (uncertain {r['uncertain']}, failed before send "
          f"{r['failed_before_send']}); delivered {r['delivered'][PARTIAL]:,} ({PARTIAL}), "
          f"{r['delivered'][DISCARD]:,} ({DISCARD}); discarded {r['discarded']:,}; "
          f"delivered but not acked {r['delivered_unacked']}")
    print(f"lost {r['lost']} {r['lost_by_binding']}; counters events_in - delivered - discarded: "
          f"{r['unaccounted']}")
    print(f"batches run {r['batches']:,} {r['batches_by_kind']}")
    print(f"duplicates across batches {r['duplicates']}; re-runs of a batch "
          f"{r['reruns']}; above count {r['above_count']}")
    print(f"runs of one batch at once: {r['concurrent_raw']} raw, {r['concurrent_paused']} with a paused "
          f"worker, {r['concurrent']} otherwise; unfinished runs {r['unfinished_runs']}")
    print(f"worker kill/stop -> batch re-run: {r['inflight_hit']} in-flight batches hit, max "
          f"{r['rerun_s_max']:.2f}s, p99 {r['rerun_s_p99']:.2f}s, never re-run {r['not_rerun_count']}")
    print(f"lease_lost logged {r['lease_lost']}, of which spurious (batch delivered once by that worker "
          f"before the line, worker not paused) {r['lease_lost_spurious']}")
    print(f"keys left in {{{NS}}}: {len(r['leftover_keys'])} {r['leftover_keys'][:20]}")
    print(f"log lines: {r['logs']}; logs in {r['logdir']}")
    print("invariants: " + ("all hold" if not r["violations"] else f"VIOLATED {r['violations']}"))


def run(quick: bool = False, minutes: float | None = None) -> dict[str, Any]:
    seconds = minutes * 60 if minutes is not None else 36.0 if quick else 120.0
    result = soak(seconds)
    report(result)
    save("chaos", result, quick)
    return result


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
