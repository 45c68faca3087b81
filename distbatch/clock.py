"""Where window time comes from: the Redis server's clock, or a ManualClock in tests."""

from __future__ import annotations

import threading
from datetime import timedelta

from .config import parse_duration
from .errors import ConfigError


class ServerClock:
    """Windows use Redis `TIME` inside the scripts, so skewed app clocks agree."""

    def now_ms(self) -> int | None:
        return None


class ManualClock:
    """A clock that moves only when told to: window expiry without sleeping."""

    def __init__(self, now_ms: int = 0) -> None:
        self._now = _checked_ms(now_ms, "now_ms")
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        return self._now

    def set(self, now_ms: int) -> None:
        checked = _checked_ms(now_ms, "now_ms")
        with self._lock:
            self._now = checked

    def advance(self, delta: int | str | timedelta) -> int:
        """Move forward by `delta` (ms, or a duration); back in time only by `set`."""
        if isinstance(delta, bool):
            raise ConfigError("advance_type", f"advance={delta!r} must be ms (an int) or a duration")
        ms = delta if isinstance(delta, int) else parse_duration(delta, "advance")
        if ms < 0:
            raise ConfigError("advance_range", f"advance={delta!r} must not be negative; to go back, set()")
        with self._lock:
            self._now = _checked_ms(self._now + ms, "now_ms", f" (after advance={delta!r})")
            return self._now


MAX_MS = (1 << 53) - 1
"""The last ms a Lua number (a double) holds exactly: the scripts compare deadlines in it."""


def _checked_ms(value: object, field: str, after: str = "") -> int:
    """A ManualClock time: an int of ms from 0 to `MAX_MS`. `int()` took '10', 1.5 and True
    silently, and NaN as a bare ValueError naming nothing."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field}_type",
                          f"{field}={value!r} must be an int of ms, not {type(value).__name__}")
    if not 0 <= value <= MAX_MS:
        raise ConfigError(f"{field}_range", f"{field}={value!r}{after} must be from 0 to {MAX_MS} ms")
    return value


Clock = ServerClock | ManualClock


def checked_clock(clock: object) -> None:
    """A batcher's `clock`: a ManualClock, a ServerClock, or None (the server's)."""
    if clock is not None and not isinstance(clock, ManualClock | ServerClock):
        raise ConfigError("clock_type", f"clock={clock!r} must be a distbatch.ManualClock (or None: the "
                          "server's clock)")
