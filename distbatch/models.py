"""The values a user sees: events, batches, and what `emit` reports."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    source: str
    payload: dict[str, Any]
    emitted_at_ms: int

    @property
    def traceparent(self) -> str | None:
        """The W3C trace context the event was emitted under (its payload's `traceparent`
        field, when that is a valid version-00 header value)."""
        value = self.payload.get("traceparent") if isinstance(self.payload, dict) else None
        return value if isinstance(value, str) and TRACEPARENT.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class Batch:
    """What a handler receives. `id` is stable across retries, so handlers can be idempotent."""

    id: str
    binding: str
    partition_key: str | None
    reason: str  # "count" or "expired"
    events: Sequence[Event] = field(default_factory=list)
    discarded: bool = False
    attempt: int = 0
    cut_at_ms: int = 0

    def __len__(self) -> int:
        return len(self.events)

    @property
    def trace_contexts(self) -> list[str]:
        """The distinct trace contexts (`traceparent` values) of its events, in arrival order:
        what a handler's span links to."""
        seen: dict[str, None] = {}
        for e in self.events:
            tp = e.traceparent
            if tp is not None:
                seen.setdefault(tp)
        return list(seen)


class EmitResult(NamedTuple):
    """What `emit` reports per binding. A named tuple, not a dataclass: emit_many builds one per
    event and binding, and a tuple is several times cheaper to make."""

    binding: str
    partition_key: str | None
    batch: Batch | None = None
    overflowed: int = 0
    """Oldest events the 1024 cap dropped from this buffer while accepting this one."""
    expired: Batch | None = None
    """The buffer this event found with its window already run out (no sweeper had flushed it
    yet): closed before the event opened a fresh one — cut (`reason="expired"`) or, with
    `expire_action="discard"`, dropped (`discarded=True`)."""
    event: int = 0
    """Index of this result's event in the payloads of the `emit_many` call (0 for `emit`)."""
