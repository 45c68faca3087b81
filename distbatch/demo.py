"""`distbatch demo`: the whole pipeline in one process — producers, a sweeper, a worker."""

from __future__ import annotations

import random
import sys
import threading
import time
from dataclasses import dataclass, field

import click

from .batcher import Batcher
from .config import parse_duration
from .handlers import HandlerResolver, handler
from .interrupts import StopFlag
from .models import Batch
from .stats import collect, pct
from .worker import configure, make_worker, start_sweeper


@dataclass
class Record:
    """What the demo handler saw, for the closing summary."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    batches: dict[str, int] = field(default_factory=lambda: {"count": 0, "expired": 0})
    events: int = 0
    cut_late_ms: list[int] = field(default_factory=list)
    start_late_ms: list[int] = field(default_factory=list)
    window_ms: int = 0
    show: bool = False


RECORD = Record()


@handler
def demo_handler(batch: Batch) -> None:
    now_ms = int(time.time() * 1000)
    with RECORD.lock:
        RECORD.batches[batch.reason] += 1
        RECORD.events += len(batch.events)
        if batch.reason == "expired":
            deadline = batch.events[0].emitted_at_ms + RECORD.window_ms
            RECORD.cut_late_ms.append(batch.cut_at_ms - deadline)
            RECORD.start_late_ms.append(now_ms - deadline)
    if RECORD.show:
        numbers = [e.payload["n"] for e in batch.events]
        click.echo(f"\nbatch {batch.id:>5} {batch.reason:<7} repo={batch.partition_key} "
                   f"{len(numbers)} events {numbers[:5]}{' ...' if len(numbers) > 5 else ''}")


def _pct(values: list[int], q: float) -> int:
    return pct(values, q) or 0


def run_demo(batcher: Batcher, *, events: int, producers: int, keys: int, count: int,
             window: str, rate: float, show: bool, stop: StopFlag) -> dict[str, object]:
    """Run until every event is delivered or `stop` is set (then the batch in hand finishes, the
    producers stop, and the summary says `interrupted`).

    Set `stop` from a thread, never from a signal handler (see `interrupts`).
    """
    others = sorted(k for k in batcher.bindings() if not k.startswith("pr-digest@demo"))
    if others:  # its worker would run (give back) their batches, and its events join theirs
        raise click.ClickException(
            f"namespace={batcher.keys.namespace!r} holds bindings the demo did not make "
            f"({', '.join(others[:5])}): run the demo in a namespace of its own (--namespace)")
    window_ms = parse_duration(window, "--window")
    key = batcher.register("pr-digest", version=f"demo-{count}-{window_ms}", source="pr.merged",
                           batch={"count": count, "window": window, "key": "repo"},
                           handler=demo_handler)  # a version per config: a rerun with another one registers
    with RECORD.lock:  # a second demo in one process (tests, a notebook) counts from 0
        RECORD.batches, RECORD.events = {"count": 0, "expired": 0}, 0
        RECORD.cut_late_ms, RECORD.start_late_ms = [], []
    RECORD.window_ms = window_ms
    RECORD.show = show
    executor = configure(batcher, HandlerResolver(), stop=stop)
    sweeping = threading.Event()
    sweeper = start_sweeper(batcher, sweeping)
    sent = [0] * producers

    def produce(p: int) -> None:
        rng = random.Random(p)
        share = events // producers + (p < events % producers)
        i = 0
        while i < share and not stop.is_set():
            chunk = [{"repo": f"acme/repo{rng.randrange(keys)}", "n": p + producers * j}
                     for j in range(i, min(share, i + rng.choice([1, 5, 20])))]
            batcher.emit_many("pr.merged", chunk)
            i += len(chunk)
            sent[p] = i
            time.sleep(len(chunk) / rate * producers * rng.uniform(0.5, 1.5))

    threads = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(producers)]
    started = time.monotonic()
    for t in threads:
        t.start()

    def status() -> str:
        with RECORD.lock:
            return (f"in {sum(sent)} | batches: {RECORD.batches['count']} at count, "
                    f"{RECORD.batches['expired']} expired | delivered {RECORD.events}")

    worker = make_worker(batcher, executor)
    interrupted = False
    with click.progressbar(length=events, label="delivered", item_show_func=lambda s: s,
                           show_eta=False, file=sys.stderr) as bar:
        done = 0
        while True:
            worker.work(burst=True, logging_level="ERROR")  # until no ticket waits
            with RECORD.lock:
                delivered = RECORD.events
            bar.update(delivered - done, status())
            done = delivered
            if stop.is_set():  # interrupted: the producers stopped too
                interrupted = True
                break
            if delivered >= events or time.monotonic() - started > 120 + events / rate * 2 + window_ms / 1000:
                break
            time.sleep(0.02)
    click.echo(status() + (" | interrupted" if interrupted else ""), err=True)  # the last word
    sweeping.set()
    sweeper.join(3)  # ended, not left running past the demo (on a Redis, past its user's deletion)
    if executor.mistake is not None:  # its drain refused by the ACL: an `Error:`, not "interrupted"
        raise executor.mistake
    elapsed = time.monotonic() - started
    stats = collect(batcher)
    # what an interrupted demo did not deliver is said, so the summary adds up: the events still
    # in open buffers go with its binding, and the batches cut and not run stay in Redis
    dropped = len(batcher.drop(key))
    return {
        "events_in": sum(sent), "batches_count": RECORD.batches["count"],
        "batches_expired": RECORD.batches["expired"], "events_delivered": RECORD.events,
        "events_dropped": dropped, "events_in_batches_left": sum(sent) - RECORD.events - dropped,
        "batches_left": stats["batches_ready_now"] + stats["batches_running_now"]
        + stats["batches_waiting_retry_now"],
        "seconds": round(elapsed, 2),
        "cut_lateness_ms": {"p50": _pct(RECORD.cut_late_ms, 0.5), "p99": _pct(RECORD.cut_late_ms, 0.99),
                            "max": max(RECORD.cut_late_ms, default=0)},
        "handler_start_lateness_ms": {"p50": _pct(RECORD.start_late_ms, 0.5),
                                      "p99": _pct(RECORD.start_late_ms, 0.99),
                                      "max": max(RECORD.start_late_ms, default=0)},
        "dead_batches": stats["batches_dead_now"],
        "interrupted": interrupted,
    }
