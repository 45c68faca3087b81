"""A chaos-soak producer process (`python -m bench.chaos_producer --help`).

Emits events `{"k", "p", "i", "id"}` (one `emit`, or a small `emit_many`) at a steady rate and,
only after `emit` returned, records their ids in the recording Redis: `chaos:acked` for events
distbatch acknowledged, `chaos:uncertain` for those an `EmitError` says may or may not be stored.
A failed emit is not retried: the producer sleeps briefly and goes on with new events. It runs
until the stop file exists, SIGTERM, or the deadline (a guard against an orphaned producer).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from typing import Any

import redis

from distbatch import Batcher
from distbatch.errors import EmitError

ACKED = "chaos:acked"
UNCERTAIN = "chaos:uncertain"
FAILED = "chaos:failed"  # count of events whose emit raised before anything was sent


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos_producer")
    ap.add_argument("--url", required=True, help="Redis under test")
    ap.add_argument("--record-url", default=os.environ.get("CHAOS_RECORD_URL"), help="recording Redis")
    ap.add_argument("--namespace", default="chaos")
    ap.add_argument("--source", default="chaos.src")
    ap.add_argument("--id", required=True, help="unique producer id (slot + generation)")
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--rate", type=float, default=40.0, help="events per second")
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--deadline", type=float, required=True, help="time.time() to stop at regardless")
    return ap.parse_args(argv)


class Producer:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.batcher = Batcher.from_url(opts.url, namespace=opts.namespace, socket_timeout=5,
                                        socket_connect_timeout=2)
        self.record = redis.Redis.from_url(opts.record_url)
        self.rng = random.Random(opts.id)
        self.next_i = 0
        self.stopping = False

    def chunk(self) -> list[dict[str, Any]]:
        """One event (60%), a small emit_many of 2-8 (30%), or a burst of 8-14 on one key (10%),
        which cuts batches at count in both bindings."""
        rng, pid = self.rng, self.opts.id
        roll = rng.random()
        if roll < 0.6:
            keys = [rng.randrange(self.opts.keys)]
        elif roll < 0.9:
            keys = [rng.randrange(self.opts.keys) for _ in range(rng.randint(2, 8))]
        else:
            keys = [rng.randrange(self.opts.keys)] * rng.randint(8, 14)
        out = []
        for key in keys:
            i, self.next_i = self.next_i, self.next_i + 1
            out.append({"k": f"key{key}", "p": pid, "i": i, "id": f"{pid}-{i}"})
        return out

    def emit(self, chunk: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """Emit; return (acknowledged ids, uncertain ids)."""
        ids = [e["id"] for e in chunk]
        try:
            if len(chunk) == 1:
                self.batcher.emit(self.opts.source, chunk[0])
            else:
                self.batcher.emit_many(self.opts.source, chunk)
        except EmitError as exc:
            print(f"emit_error stored={exc.stored} uncertain={exc.uncertain}: {exc}", flush=True)
            return [ids[i] for i in exc.stored], [ids[i] for i in exc.uncertain]
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # before anything was sent
            print(f"emit_failed: {exc!r}", flush=True)
            self.record.incrby(FAILED, len(ids))
            return [], []
        return ids, []

    def run(self) -> None:
        period = 1.0 / self.opts.rate
        next_at = time.monotonic()
        while not self.stopping and time.time() < self.opts.deadline:
            if os.path.exists(self.opts.stop_file):
                break
            chunk = self.chunk()
            acked, uncertain = self.emit(chunk)
            if acked:
                self.record.rpush(ACKED, *acked)
            if uncertain:
                self.record.rpush(UNCERTAIN, *uncertain)
            if len(acked) < len(chunk):  # Redis down or restarting: back off a little
                time.sleep(0.1)
            next_at = max(next_at + period * len(chunk), time.monotonic() - 1.0)
            time.sleep(max(0.0, next_at - time.monotonic()))
        print(f"done id={self.opts.id} events={self.next_i}", flush=True)


def main(argv: list[str] | None = None) -> None:
    producer = Producer(_args(sys.argv[1:] if argv is None else argv))

    def stop(*_: object) -> None:
        producer.stopping = True

    signal.signal(signal.SIGTERM, stop)
    producer.run()


if __name__ == "__main__":
    main()
