"""A handler past its `retry.timeout` is interrupted, as RQ's job timeout interrupts a job.

Before, only its lease stopped being renewed: the batch was retried elsewhere, but the worker
stayed inside the hung handler, running no other batch and deaf to a warm shutdown. Now
`HandlerTimeout` is raised in it; the batch fails and is retried under its binding's policy.

SIGALRM with ITIMER_REAL, like RQ's `UnixSignalDeathPenalty`, so a handler blocked in `sleep` or
a socket read is interrupted too; only in the main thread (where RQ's SimpleWorker runs jobs:
signals reach no other), elsewhere the handler runs unbounded as before. RQ arms the same timer
around each job (distbatch's ticket: no timeout, i.e. years); it is put back afterwards. Not
interrupted: a handler stuck inside C code that never returns to Python, or one that catches
BaseException; its lease still runs out, so its batch is retried elsewhere.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

from .errors import HandlerTimeout


@contextlib.contextmanager
def bounded(timeout_ms: int | None) -> Iterator[None]:
    """Raise HandlerTimeout in the block once it has run `timeout_ms` (None: unbounded).

    The alarm may come just as the block ends, and then surface right after it: a caller that
    needs to know whether its block finished sets a flag as its last statement."""
    if not timeout_ms or threading.current_thread() is not threading.main_thread():
        yield
        return
    seconds = timeout_ms / 1000
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left <= seconds:  # an outer timer comes first: it stays in charge
        yield
        return
    armed = True

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal armed
        if armed:
            armed = False
            raise HandlerTimeout(seconds)

    outer = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            armed = False  # the alarm fires once at most: its raise may come from this line
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, outer)
            if outer_left:  # RQ's (or a caller's) timer, less the time spent here
                signal.setitimer(signal.ITIMER_REAL,
                                 max(0.001, outer_left - (time.monotonic() - started)))
