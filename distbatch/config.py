"""Trigger configuration: parsed and validated once, at the edge, into frozen dataclasses."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from fractions import Fraction
from typing import Any

from .errors import ConfigError
from .errors import short as _short

log = logging.getLogger("distbatch")

BUFFER_CAP = 1024
"""Most events one buffer holds; beyond it the oldest is dropped (SPEC §1)."""

MAX_DURATION_MS = 100 * 365 * 86_400_000
"""The longest duration taken (100 years): a window's deadline (now + window, in ms) must stay an
exact integer in a Lua number, and a backoff one a worker can sleep through."""

EXPIRE_ACTIONS = {"fire_partial": "fire_partial", "fire": "fire_partial", "discard": "discard"}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")  # not \d: '٣s' is no duration
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNITS = ("d", "h", "m", "s", "ms")  # the order a duration's parts come in
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_SOURCE = re.compile(r"^[A-Za-z0-9_.:/\-]{1,200}$")
_HANDLER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def parse_duration(value: object, field: str = "batch.window") -> int:
    """Turn `"1h30m"`, `"250ms"` or a `timedelta` into whole milliseconds (> 0). `field`: its
    name as the user wrote it (`batch.window`, `retry.timeout`, `--interval`); the error code
    is its last part (`window_format`, `timeout_range`, `interval_type`)."""
    code = field.rsplit(".", 1)[-1].lstrip("-").replace("-", "_")
    if value is None:
        raise ConfigError(f"{code}_missing", f"{field} is required (e.g. '30s')")
    if isinstance(value, timedelta):
        if value % timedelta(milliseconds=1):  # 1.5 ms was 1 ms, and 1 µs "must be longer than 0ms"
            raise ConfigError(f"{code}_format", f"{field}={value!r} is not a whole number of milliseconds")
        ms = value // timedelta(milliseconds=1)  # exact: total_seconds() * 1000 made 1001 ms 1000
    elif isinstance(value, str):
        text = value.strip().lower()
        pos, total, rank = 0, Fraction(0), -1
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos or _UNITS.index(m.group(2)) <= rank:  # '10m10m' was 20m, '30m1h' 90m
                break
            rank = _UNITS.index(m.group(2))
            # Fraction raises a bare ValueError past Python's 4,300 digits: a number this long is
            # past 100 years in any unit, or a fraction finer than a millisecond can be
            if len(m.group(1).partition(".")[0].lstrip("0")) > 15:
                raise ConfigError(f"{code}_range", f"{field}={_short(value)} must be at most 100 years")
            if len(m.group(1)) > 40:
                raise ConfigError(f"{code}_format", f"{field}={_short(value)} has a number of over 40 digits")
            total += Fraction(m.group(1)) * _UNIT_MS[m.group(2)]  # exact: as floats, '1.001s' was 1000 ms
            pos = m.end()
        if not text or pos != len(text):
            raise ConfigError(
                f"{code}_format",
                f"{field}={value!r} is not a duration; use e.g. '250ms', '30s', '10m', "
                "'2h', '1d' or '1h30m' (each unit once, the largest first)",
            )
        if total > MAX_DURATION_MS:
            raise ConfigError(f"{code}_range", f"{field}={_short(value)} must be at most 100 years")
        if total.denominator != 1:  # '1.5ms' was 1 ms, where timedelta(microseconds=1500) is refused
            raise ConfigError(f"{code}_format", f"{field}={value!r} is not a whole number of milliseconds")
        ms = int(total)
    else:
        raise ConfigError(
            f"{code}_type",
            f"{field}={value!r} must be a duration string or datetime.timedelta, "
            f"not {type(value).__name__}",
        )
    if ms <= 0:
        raise ConfigError(f"{code}_range", f"{field}={value!r} must be longer than 0ms")
    if ms > MAX_DURATION_MS:
        raise ConfigError(f"{code}_range", f"{field}={_short(value)} must be at most 100 years")
    return ms


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """When a buffer fires: at `count` events, or when `window_ms` after its first event ran out."""

    count: int
    window_ms: int
    key: str | None = None
    expire_action: str = "fire_partial"

    @classmethod
    def parse(cls, batch: object) -> BatchConfig:
        if not isinstance(batch, Mapping):
            raise ConfigError(
                "batch_type", f"batch={batch!r} must be a mapping, not {type(batch).__name__}"
            )
        unknown = set(batch) - {"count", "window", "key", "expire_action"}
        if unknown:
            raise ConfigError(
                "batch_unknown_field",
                f"batch has unknown field(s) {sorted(map(str, unknown))}; "
                "valid: count, window, key, expire_action",
            )
        count = batch.get("count")
        if count is None:
            raise ConfigError("count_missing", "batch.count is required (an integer > 0)")
        if isinstance(count, bool) or not isinstance(count, int):
            raise ConfigError(
                "count_type",
                f"batch.count={count!r} must be an integer, not {type(count).__name__}",
            )
        if count <= 0:
            raise ConfigError("count_range", f"batch.count={count!r} must be > 0")
        window_ms = parse_duration(batch.get("window"))
        key = batch.get("key")
        if key is not None and not isinstance(key, str):
            raise ConfigError(
                "key_type", f"batch.key={key!r} must be a string, not {type(key).__name__}"
            )
        if key is not None and key.strip() and "" in key.strip().split("."):  # blank: no key
            raise ConfigError(
                "key_invalid", f"batch.key={key!r} must be a dot-path of non-empty field names "
                "(e.g. 'repo' or 'user.id'); it could never resolve"
            )
        key = key.strip() if key else None
        action = batch.get("expire_action", "fire_partial")
        if not isinstance(action, str) or action not in EXPIRE_ACTIONS:
            raise ConfigError(
                "expire_action_invalid",
                f"batch.expire_action={action!r} is not valid; "
                f"valid: {', '.join(sorted(EXPIRE_ACTIONS))}",
            )
        return cls(count, window_ms, key or None, EXPIRE_ACTIONS[action])


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing handler is tried, and how long to wait between tries."""

    attempts: int = 3
    backoff_ms: int = 1000
    backoff_factor: float = 2.0
    max_backoff_ms: int = 300_000
    timeout_ms: int | None = None
    """A handler running longer loses its lease: the batch goes back and counts as a failed try."""

    @classmethod
    def parse(cls, retry: object, stored: bool = False) -> RetryPolicy:
        """A policy as a user gives it; `stored`: as `Binding.to_dict` wrote it to Redis, where a
        cap below the backoff, taken before it was refused, must still read (the cap wins)."""
        if retry is None:
            return cls()
        if isinstance(retry, RetryPolicy):
            return retry
        if not isinstance(retry, Mapping):
            raise ConfigError("retry_type", f"retry={retry!r} must be a mapping")
        unknown = set(retry) - {"attempts", "backoff", "backoff_factor", "max_backoff", "timeout"}
        if unknown:
            raise ConfigError(
                "retry_unknown_field",
                f"retry has unknown field(s) {sorted(map(str, unknown))}; "
                "valid: attempts, backoff, backoff_factor, max_backoff, timeout",
            )
        default = cls()
        attempts = retry.get("attempts", default.attempts)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigError(
                "retry_attempts", f"retry.attempts={attempts!r} must be an integer >= 1"
            )
        factor = retry.get("backoff_factor", default.backoff_factor)
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 1 <= factor < math.inf:
            raise ConfigError(
                "retry_backoff_factor", f"retry.backoff_factor={factor!r} must be a number >= 1"
            )
        backoff = retry.get("backoff")
        max_backoff = retry.get("max_backoff")
        timeout = retry.get("timeout")
        backoff_ms = default.backoff_ms if backoff is None else parse_duration(backoff, "retry.backoff")
        if max_backoff is None:  # a backoff past the default cap is what the user asked for
            max_backoff_ms = max(default.max_backoff_ms, backoff_ms)
        else:
            max_backoff_ms = parse_duration(max_backoff, "retry.max_backoff")
            if max_backoff_ms < backoff_ms and not stored:
                raise ConfigError(
                    "max_backoff_range",
                    f"retry.max_backoff={max_backoff!r} is shorter than "
                    + (f"retry.backoff={backoff!r}" if backoff is not None
                       else f"the default retry.backoff ({default.backoff_ms}ms)")
                    + ": every try would wait the cap; give a max_backoff at least as long",
                )
        return cls(attempts, backoff_ms, float(factor), max_backoff_ms,
                   None if timeout is None else parse_duration(timeout, "retry.timeout"))

    def delay_ms(self, attempt: int) -> int:
        """Wait before try `attempt + 1`, after try `attempt` failed (exponential, capped)."""
        try:
            return int(min(self.max_backoff_ms, self.backoff_ms * self.backoff_factor ** (attempt - 1)))
        except OverflowError:  # factor ** attempt past a float (try 1025 at factor 2): the cap
            return self.max_backoff_ms


@dataclass(frozen=True, slots=True)
class Binding:
    """A trigger bound to a source: what every app instance and worker reads from Redis."""

    id: str
    version: str
    source: str
    handler: str
    batch: BatchConfig
    retry: RetryPolicy = RetryPolicy()

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @classmethod
    def build(
        cls,
        id: str,
        *,
        version: str,
        source: str,
        batch: object,
        handler: object,
        retry: object = None,
    ) -> Binding:
        binding = cls._checked(id, version, source, batch, handler, retry)
        if binding.batch.count > BUFFER_CAP:
            log.warning(
                "count_above_cap: binding %s has count=%d > %d; its buffers are capped at %d "
                "events (oldest dropped), so it can only fire when its window runs out",
                binding.key, binding.batch.count, BUFFER_CAP, BUFFER_CAP,
                extra={"event": "count_above_cap", "binding": binding.key},
            )
        return binding

    @classmethod
    def _checked(cls, id: object, version: object, source: object, batch: object, handler: object,
                 retry: object, stored: bool = False) -> Binding:
        for field, value, pattern in (("id", id, _NAME), ("version", version, _NAME)):
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise ConfigError(
                    f"{field}_invalid",
                    f"{field}={value!r} must be 1-200 characters of A-Z a-z 0-9 _ . -",
                )
        if not isinstance(source, str) or not _SOURCE.fullmatch(source):
            raise ConfigError(
                "source_invalid", f"source={source!r} must be 1-200 characters of A-Z a-z 0-9 _.:/-"
            )
        if callable(handler):
            handler = f"{handler.__module__}.{getattr(handler, '__qualname__', handler)}"
        if not isinstance(handler, str) or not _HANDLER.fullmatch(handler):
            raise ConfigError(
                "handler_invalid",
                f"handler={handler!r} must be an import path like 'myapp.handlers.digest'",
            )
        if handler.startswith("__main__."):  # what a worker imports as __main__ is its own CLI
            raise ConfigError(
                "handler_invalid",
                f"handler={handler!r} is defined in the script being run (__main__): workers import "
                "handlers by module path, so none could run it; define it in a module "
                "(myapp/handlers.py) and pass that function or its path",
            )
        return cls(id, version, source, handler, BatchConfig.parse(batch),  # type: ignore[arg-type]
                   RetryPolicy.parse(retry, stored))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["retry"]["timeout_ms"] is None:  # keep definitions stored before it identical
            del data["retry"]["timeout_ms"]
        return data

    @classmethod
    def stored_as(cls, raw: str | bytes, key: str) -> Binding:
        """`from_json` of the definition stored under the binding key `key`, which must be its own:
        under another name its events went to the other's buffers, and its batches to a handler
        that name was never registered with."""
        binding = cls.from_json(raw, key[:200])
        if binding.key != key:
            raise ConfigError("binding_unreadable", f"binding {key[:200]!r}: its definition in Redis is "
                              f"that of {binding.key!r}")
        return binding

    @classmethod
    def from_json(cls, raw: str | bytes, name: str = "?") -> Binding:
        """`from_dict` of a definition as stored (JSON text) under the binding key `name`."""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise ConfigError("binding_unreadable",
                              f"binding {name}: its definition in Redis is not JSON: {_short(raw)}") from exc
        return cls.from_dict(data, name)

    @classmethod
    def from_dict(cls, data: object, name: str = "?") -> Binding:
        """A definition as `to_dict` wrote it to Redis, checked as `build` checks what a user
        registers: a worker must never take a handler path, a count or a window from Redis that
        `register` would have refused (a hostile writer's). Anything else is a ConfigError
        `binding_unreadable` naming what is wrong."""
        def ms(value: object) -> object:  # stored in whole ms; as a string, parse_duration checks it
            return f"{value}ms" if type(value) is int else value

        try:
            if not isinstance(data, Mapping):
                raise TypeError(f"not a JSON object: {_short(data)}")
            b, r = data["batch"], data["retry"]
            if not (isinstance(b, Mapping) and isinstance(r, Mapping)):
                raise TypeError("batch and retry must be objects")
            batch = {"count": b["count"], "window": ms(b["window_ms"]), "key": b.get("key"),
                     "expire_action": b.get("expire_action", "fire_partial")}
            retry = {"attempts": r["attempts"], "backoff": ms(r["backoff_ms"]),
                     "backoff_factor": r["backoff_factor"], "max_backoff": ms(r["max_backoff_ms"]),
                     "timeout": ms(r.get("timeout_ms"))}
            return cls._checked(data["id"], data["version"], data["source"], batch, data["handler"], retry,
                                stored=True)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # ConfigError is a ValueError
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ConfigError("binding_unreadable",
                              f"binding {name}: its definition in Redis cannot be read: {what}") from exc
