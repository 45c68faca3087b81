"""One small hierarchy, so callers can catch everything distbatch raises with one clause."""

from __future__ import annotations

import reprlib
from typing import Any

import redis

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxstring, _repr.maxother = 3, 6, 6, 40, 40


def short(value: object) -> str:
    """A bounded repr for error messages: a full repr of a hostile value (5,000 levels deep, or
    megabytes) would raise RecursionError or flood the log."""
    return _repr.repr(value)[:120]


class DistbatchError(Exception):
    """Base of every error distbatch raises on purpose."""


def describe(exc: BaseException) -> str:
    """`Type: message`, for logs and error texts: redis-py 6+ leaves the message out of its
    errors' repr (`server:ResponseError`), which would hide why a call failed."""
    try:
        text = str(exc)
    except Exception:  # a handler's exception whose __str__ raises: failing here broke the drain
        text = "<its message could not be read>"
    if len(text) > DESCRIBE_LIMIT:  # a handler's megabyte message was logged whole on every try
        text = f"{text[:DESCRIBE_LIMIT]}... ({len(text) - DESCRIBE_LIMIT:,} more characters)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


DESCRIBE_LIMIT = 2000
"""Characters of an error's message in a log line or error text."""


POOL_EXHAUSTED = ("Too many connections", "No connection available")
"""What redis-py's pools say when none is left (`ConnectionPool`, `BlockingConnectionPool`)."""
POOL_HINT = ("; the client's connection pool is used up: each emitting thread keeps one of its "
             "connections for its emits, and a registry reload or a hand-off in that thread takes a "
             "second, so size max_connections to twice the emitting threads")


def with_pool_hint(exc: Exception) -> Exception:
    """`exc`, or for a pool used up the same error saying why it happens here (a pool sized for
    the emitting threads, the README's old advice, runs out at the first registry reload)."""
    if str(exc).rstrip(".") not in POOL_EXHAUSTED:
        return exc
    try:
        hinted = type(exc)(str(exc).rstrip(".") + POOL_HINT)
    except Exception:
        return exc
    hinted.__cause__ = exc
    return hinted


class ConfigError(DistbatchError, ValueError):
    """A trigger or batch configuration is invalid; `code` is stable for programs to match."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PayloadError(DistbatchError, ValueError):
    """An event payload cannot be stored (not a mapping, not encodable, or too large). `event`:
    its index in the call's payloads, when known."""

    def __init__(self, code: str, message: str, event: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.event = event
        self.reason = message if reason is None else reason
        """What is wrong with the payload, without which event of which call (the message's frame)."""


class HandlerNotAllowed(DistbatchError):
    """A worker was asked to run a handler it was not allowed to import."""


class BatchNotFound(DistbatchError, KeyError):
    """No batch record under that id (already delivered, purged, or never cut)."""


class EmitError(DistbatchError):
    """Redis failed part-way through `emit_many`. Exactly what was stored is known, by index
    into the payloads given:

    - `stored`: these events were stored (`results` are theirs, in order);
    - `uncertain`: these were sent but no answer came back, twice (Redis unreachable), or the
      script failed part-way (a value it cannot take, written by another program); they may or
      may not be stored;
    - every other event was not sent (`not_sent`).
    Re-emitting `not_sent` never duplicates; re-emitting `uncertain` may.
    """

    def __init__(self, results: list[Any], stored: list[int], uncertain: list[int], total: int,
                 cause: BaseException) -> None:
        self.results = results
        self.stored = stored
        self.uncertain = uncertain
        self.not_sent = sorted(set(range(total)) - set(stored) - set(uncertain))
        why = ("the cluster is down" if isinstance(cause, redis.exceptions.ClusterError)  # no script ran
               else "the script failed" if isinstance(cause, redis.ResponseError)
               else "no reply from Redis" if isinstance(cause, redis.ConnectionError | redis.TimeoutError)
               else "stopped")  # e.g. a payload that failed as a binding registered meanwhile read it
        if total == 1:  # one event: no "part" of it
            state = ("stored" if stored else "may or may not be stored" if uncertain else "not sent")
            message = f"emit failed: the event {state} ({why}: {describe(cause)})"
        else:
            message = (f"emit failed part-way: {len(stored)} event(s) stored, {len(uncertain)} may or "
                       f"may not be ({why}: {describe(cause)}), {len(self.not_sent)} not sent")
        super().__init__(message)


class HandlerTimeout(BaseException):
    """Raised inside a handler that ran past its `retry.timeout` (`handler_timeout.bounded`).

    A BaseException, as asyncio's CancelledError: a handler's own `except Exception` (a log and
    go on) must not swallow it and keep a hung handler running. Not a DistbatchError, for the
    same reason; it never leaves the worker.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the handler ran past its timeout of {seconds:g}s and was interrupted")
        self.seconds = seconds
