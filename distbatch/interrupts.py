"""SIGINT/SIGTERM taken by a thread of our own, so that what they start runs as ordinary code.

A Python signal handler runs in the main thread between two bytecodes, wherever that thread is:
inside fakeredis while it holds its server lock, or inside `Event.wait` while it holds the event's
lock. A handler that takes the same lock (RQ's warm shutdown writes to Redis; `Event.set`) then
waits for itself forever: `distbatch demo` hung on Ctrl-C that way. Blocked signals taken with
`sigtimedwait` by a watcher thread cannot land anywhere.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


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
            if got is not None:
                on_signal(got.si_signo)

    watcher = threading.Thread(target=watch, name="distbatch-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        while (got := signal.sigtimedwait(signals, 0)) is not None:  # one that came just now
            on_signal(got.si_signo)
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
