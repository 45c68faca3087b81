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
        self._now = int(now_ms)
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        return self._now

    def set(self, now_ms: int) -> None:
        with self._lock:
            self._now = int(now_ms)

    def advance(self, delta: int | str | timedelta) -> int:
        """Move forward by `delta` (ms, or a duration); back in time only by `set`."""
        ms = delta if isinstance(delta, int) else parse_duration(delta, "advance")
        if ms < 0:
            raise ConfigError("advance_range", f"advance={delta!r} must not be negative; to go back, set()")
        with self._lock:
            self._now += ms
            return self._now


Clock = ServerClock | ManualClock
