"""A bound on log lines that repeat once per event or per batch.

A line per event is fine until something outside the process sets the rate: a producer
emitting into a buffer at its cap (a line per emit, with whatever partition key it sent), an
HTTP client inventing source names (a line per request), a batch no worker can run (a line per
batch every 5 s, for ever). A review measured 10 MB of log from 100 emits, and 1.1 GB a day
from 200 stuck batches. Each such line goes through a budget: the first few in a window are
written, the rest counted, and the count said on the next line written.
"""

from __future__ import annotations

import threading
import time

SHOWN_CHARS = 200
"""A caller's value (a source, a partition key) is cut to this in a log line."""


def shown(value: object) -> str:
    """`value` as `%r` shows it, cut to `SHOWN_CHARS`: a caller may send a megabyte."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def clipped(value: str | None) -> str | None:
    """`value` cut to `SHOWN_CHARS`, for a log record's structured fields."""
    return value if value is None or len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "…"


class LogBudget:
    """At most `lines` lines per `window_s`, for one kind of line of one owner (a batcher's, a
    worker's executor's)."""

    def __init__(self, lines: int = 10, window_s: float = 60.0) -> None:
        self.lines, self.window_s = lines, window_s
        self._lock = threading.Lock()
        self._began = -window_s
        self._written = self._held = 0
        self._held_keys: set[object] = set()

    def take(self, key: object = None) -> str | None:
        """None: leave this line out (it is counted, once per `key` a window, where one is
        given: a source emitted to 500 times is one line left out). Else the line may be
        written, with this text after it: '' or how many were left out before it."""
        now = time.monotonic()
        with self._lock:
            if now - self._began >= self.window_s:
                self._began, self._written = now, 0
                self._held_keys.clear()
            if self._written >= self.lines:
                if key is None or (key not in self._held_keys and len(self._held_keys) < 4096):
                    self._held += 1
                    if key is not None:
                        self._held_keys.add(key)
                return None
            self._written += 1
            held, self._held = self._held, 0
        return "" if not held else f" ({held} more such line(s) left out before this one)"
