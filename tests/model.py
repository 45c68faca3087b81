"""A small pure-Python reference model of SPEC §1, to check the Redis implementation against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distbatch.config import BUFFER_CAP, BatchConfig
from distbatch.partition import partition_key, split_path

Cut = tuple[str, str | None, str, bool, tuple[Any, ...]]


@dataclass
class Model:
    bindings: dict[str, BatchConfig] = field(default_factory=dict)
    buffers: dict[tuple[str, str | None], tuple[int, list[Any]]] = field(default_factory=dict)

    def emit(self, now: int, payload: dict[str, Any]) -> list[Cut]:
        """Cuts in the order the emit makes them: an expired buffer this event closes first."""
        cuts = []
        for name, cfg in self.bindings.items():
            pkey = partition_key(payload, split_path(cfg.key))
            opened, events = self.buffers.get((name, pkey), (now, []))
            if events and opened + cfg.window_ms <= now:  # ran out before a sweeper came
                del self.buffers[(name, pkey)]
                cuts.append((name, pkey, "expired", cfg.expire_action == "discard", tuple(events)))
            _opened, events = self.buffers.setdefault((name, pkey), (now, []))
            events.append(payload["n"])
            del events[:-BUFFER_CAP]
            if len(events) >= cfg.count:
                del self.buffers[(name, pkey)]
                cuts.append((name, pkey, "count", False, tuple(events)))
        return cuts

    def flush(self, now: int) -> list[Cut]:
        cuts = []
        for (name, pkey), (opened, events) in list(self.buffers.items()):
            cfg = self.bindings[name]
            if opened + cfg.window_ms <= now:
                del self.buffers[(name, pkey)]
                cuts.append((name, pkey, "expired", cfg.expire_action == "discard", tuple(events)))
        return cuts

    def drop(self, name: str) -> list[Any]:
        self.bindings.pop(name, None)
        pending = []
        for (b, pkey) in list(self.buffers):
            if b == name:
                pending += self.buffers.pop((b, pkey))[1]
        return pending
