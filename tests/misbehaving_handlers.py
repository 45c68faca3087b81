"""Misbehaving handlers for tests/test_misbehaving_handlers.py (allowed as tests.misbehaving_handlers)."""

from __future__ import annotations

import json
import os
import signal
import time

from distbatch import Batch

from .handlers import client, record


def _note(batch: Batch, key: str) -> None:
    client().rpush(key, json.dumps({"id": batch.id, "attempt": batch.attempt, "pid": os.getpid(),
                                    "events": [e.id for e in batch.events], "t": time.time()}))


def exits(batch: Batch) -> None:
    """A handler that calls sys.exit (a BaseException, not an Exception)."""
    _note(batch, "test:started")
    raise SystemExit(f"handler gave up on batch {batch.id}")


class HugeMessage(Exception):
    def __str__(self) -> str:
        return "H" * (1 << 20)


def huge_message(batch: Batch) -> None:
    raise HugeMessage()


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str of BadStr failed")


def bad_str(batch: Batch) -> None:
    _note(batch, "test:started")
    raise BadStr()


def kills_if_asked(batch: Batch) -> None:
    """A handler that takes its worker process down (SIGKILL: an out-of-memory kill, a segfault
    in a C extension) when an event says so; else it records the batch as delivered."""
    _note(batch, "test:started")
    if any(e.payload.get("kill") for e in batch.events):
        os.kill(os.getpid(), signal.SIGKILL)
    record(batch)
