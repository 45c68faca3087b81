"""The trigger registry: bindings stored in Redis for every instance to see, one copy per shard
(the first shard decides), read as one snapshot with the random epoch it was written under.

Every accumulate call sends the epoch its routes came from and the script refuses a stale one,
so a register or drop made by another instance is seen at the next emit. A register or drop that
reached the first shard but not another (cut off part-way) is healed by the first emitter that
meets the out-of-step copy (`sync`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from .codec import as_text
from .config import Binding
from .errors import ConfigError
from .keys import Keys
from .partition import split_path
from .scripts import Scripts


@dataclass(frozen=True, slots=True)
class Route:
    """Where a source's events go: one binding, with its arguments pre-encoded."""

    binding: Binding
    key: str
    path: tuple[str, ...] | None
    count: bytes
    window: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent read of the bindings: routes and the epoch they were read at, swapped as a
    whole so an emit never pairs new routes with an old epoch."""

    epoch: bytes = b""
    routes: dict[str, list[Route]] = field(default_factory=dict)
    bindings: dict[str, Binding] = field(default_factory=dict)
    raw: dict[bytes, bytes] = field(default_factory=dict)
    loaded: bool = False


class Registry:
    def __init__(self, client: Any, shards: list[Keys], scripts: Scripts, cluster: bool) -> None:
        self.client = client
        self.shards = shards
        self.scripts = scripts
        self.cluster = cluster
        self._snapshot = Snapshot()

    @property
    def snapshot(self) -> Snapshot:
        """The cached snapshot, read on first use and after every invalidation."""
        snap = self._snapshot
        return snap if snap.loaded else self.load()

    def invalidate(self) -> None:
        self._snapshot = Snapshot()

    def load(self) -> Snapshot:
        k = self.shards[0]
        if self.cluster:  # epoch first: a register in between makes it stale, never the reverse
            epoch = self.client.get(k.registry_version)
            raw = self.client.hgetall(k.bindings)
        else:
            pipe = self.client.pipeline(transaction=True)
            pipe.get(k.registry_version)
            pipe.hgetall(k.bindings)
            epoch, raw = pipe.execute()
        bindings = {as_text(b): Binding.from_dict(json.loads(v)) for b, v in sorted(raw.items())}
        routes: dict[str, list[Route]] = {}
        for b in bindings.values():
            routes.setdefault(b.source, []).append(
                Route(b, b.key, split_path(b.batch.key), b"%d" % b.batch.count, b"%d" % b.batch.window_ms)
            )
        self._snapshot = snap = Snapshot(epoch or b"", routes, bindings, dict(raw), True)
        return snap

    def current_epoch(self) -> bytes:
        epoch: bytes = self.client.get(self.shards[0].registry_version) or b""
        return epoch

    def register(self, binding: Binding) -> None:
        """Store `binding` on every shard under one new epoch; a conflict is a ConfigError."""
        definition = json.dumps(binding.to_dict(), sort_keys=True, separators=(",", ":"))
        epoch = secrets.token_hex(8)
        for i, k in enumerate(self.shards):  # the first shard decides; the others are copies
            stored = self.scripts.register(
                keys=[k.bindings, k.registry_version, k.dropped], args=[binding.key, definition, epoch]
            )
            if isinstance(stored, bytes):
                if i == 0:
                    raise ConfigError(
                        "binding_conflict",
                        f"binding={binding.key!r} is already registered with a different config "
                        f"({stored.decode()}); register the new behaviour under a new version",
                    )
                self.sync(i, self.load())  # a copy out of step (an earlier op cut off part-way)
        self.invalidate()

    def unbind(self, binding: str) -> list[list[bytes]]:
        """First step of a drop, on every shard: the binding takes no more events (its definition
        moves to `dropped`). Returns each shard's open members of it."""
        epoch = secrets.token_hex(8)
        members = []
        for k in self.shards:
            reply = self.scripts.unbind(
                keys=[k.bindings, k.registry_version, k.dropped, k.open_buffers(binding)],
                args=[binding, epoch],
            )
            members.append(list(reply[1:]))
        self.invalidate()
        return members

    def sync(self, shard: int, snap: Snapshot) -> None:
        """Copy the first shard's registry onto `shard` (a register/drop that did not reach it)."""
        k = self.shards[shard]
        pairs = [x for kv in snap.raw.items() for x in kv]
        self.scripts.sync_registry(keys=[k.bindings, k.registry_version], args=[snap.epoch, *pairs])
