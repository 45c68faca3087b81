"""SIGINT/SIGTERM taken by a thread of our own, so that what they start runs as ordinary code.

A Python signal handler runs in the main thread between two bytecodes, wherever that thread is:
inside fakeredis while it holds its server lock, or inside `Event.wait` while it holds the event's
lock. A handler that takes the same lock (RQ's warm shutdown writes to Redis; `Event.set`) then
waits for itself forever: `distbatch demo` hung on Ctrl-C that way. Blocked signals taken with
`sigtimedwait` by a watcher thread cannot land anywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class StopFlag:
    """A stop request that even a signal handler may make: `set` is one attribute write, where
    `threading.Event.set` takes the lock that the interrupted main thread may hold in its own
    `Event.wait`. Waiting polls (50 ms): it is for stopping, not for latency."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._set and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, left))
        return self._set


def stop_then_exit(stop: StopFlag | threading.Event, what: str) -> Callable[[int], None]:
    """For `taken_by_thread`: the first signal sets `stop`; a second exits at once (128 + its
    number), for a process whose stop waits on a Redis that does not answer."""

    def on_signal(signum: int) -> None:
        if stop.is_set():
            print(f"\nsecond signal: {what} exits now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        stop.set()

    return on_signal


@contextlib.contextmanager
def taken_by_thread(on_signal: Callable[[int], None],
                    signals: frozenset[signal.Signals] = STOP_SIGNALS) -> Iterator[None]:
    """Call `on_signal(signum)` from a watcher thread for each of `signals` while the block runs.

    Enter it in the main thread before starting other threads: they inherit the blocked mask.
    On exit the mask and the Python-level handlers are as they were (RQ's worker installs its own,
    which never run while the signals are blocked).
    """
    handlers = {s: signal.getsignal(s) for s in signals}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            got = signal.sigtimedwait(signals, 0.1)
            # A SIGCONT that ends the wait past its timeout (the process was stopped, SIGSTOP)
            # makes CPython return a siginfo of uninitialised memory: taken for a stop signal, it
            # stopped sweepers in silence. Only a signal of `signals` is one.
            if got is not None and got.si_signo in signals:
                on_signal(got.si_signo)

    watcher = threading.Thread(target=watch, name="distbatch-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        while (got := signal.sigtimedwait(signals, 0)) is not None and got.si_signo in signals:
            on_signal(got.si_signo)  # one that came just now
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
