"""The trigger registry: bindings stored in Redis for every instance to see, one copy per shard
(the first shard decides), read as one snapshot with the random epoch it was written under.

Every accumulate call sends the epoch its routes came from and the script refuses a stale one,
so a register or drop made by another instance is seen at the next emit. A register or drop that
reached the first shard but not another (cut off part-way) is healed by the first emitter that
meets the out-of-step copy (`sync`).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from .codec import as_text
from .config import Binding
from .errors import ConfigError
from .keys import Keys
from .ops import Atomic, Cmd, Eval, Proc
from .partition import split_path

log = logging.getLogger("distbatch")


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
    """The registry of one namespace. Every method that touches Redis is a procedure (`ops.Proc`):
    `Batcher` and `AsyncBatcher` drive the same code."""

    def __init__(self, shards: list[Keys], cluster: bool) -> None:
        self.shards = shards
        self.cluster = cluster
        self.cached = Snapshot()
        """The last snapshot read; `loaded` is False until the first read and after a change."""
        self.own: dict[str, Binding] = {}
        """The bindings this instance registered: stored again if Redis loses them (`_restore`)."""

    def invalidate(self) -> None:
        self.cached = Snapshot()

    def snapshot(self) -> Proc[Snapshot]:
        """The cached snapshot, read on first use and after every invalidation."""
        snap = self.cached
        if not snap.loaded:
            snap = yield from self.load()
        return snap

    def load(self, restore: bool = True) -> Proc[Snapshot]:
        k = self.shards[0]
        own = self.own.copy()  # before the read: each was stored before it, so the read must show
        # it (one another thread registers meanwhile may not be in the read, and is not lost)
        # epoch first: a register in between makes the snapshot stale, never the reverse
        epoch, raw = yield Atomic((Cmd("get", (k.registry_version,)), Cmd("hgetall", (k.bindings,))))
        snap = self.cached
        # no epoch and no binding where there were: not a drop (that moves the epoch on) but
        # Redis' data gone
        lost = len(snap.bindings) if snap.loaded and not epoch and not raw else 0
        if not (snap.loaded and snap.epoch == (epoch or b"") and snap.raw == raw):
            self.cached = snap = self.parse(epoch or b"", raw)
        missing = [b for key, b in own.items() if key.encode() not in raw] if restore else []
        if missing and (yield from self._restore(missing)):
            snap = yield from self.load(restore=False)
        elif lost and restore:  # and this process registered none of them to store again: its
            # events to their sources go nowhere from now (`source_unbound`, which says no why)
            log.error("registry_lost namespace=%s: Redis no longer holds any binding (%d were there: "
                      "restarted without persistence, flushed, or evicted), and this process "
                      "registered none of them; events to their sources are not stored until a "
                      "process registers them again", self.shards[0].namespace, lost,
                      extra={"event": "registry_lost"})
        return snap  # unchanged: the same object, so what was made per snapshot stays

    def _restore(self, missing: list[Binding]) -> Proc[bool]:
        """Store again the bindings this instance registered that Redis no longer has, neither
        registered nor dropped: it lost them (restarted without persistence, flushed, evicted).
        Before, a running app's events went nowhere from then on (`source_unbound`), until it was
        restarted. A binding dropped (its definition in `dropped`), by another instance, before
        or while this runs, is left dropped: `register.lua` decides it in the same step that
        stores. Returns whether anything was stored."""
        from .shards import Layout

        namespace = self.shards[0].namespace  # its layout too, if that went with them
        yield from Layout.read(namespace, len(self.shards), lambda: len(self.shards), fix=True)
        stored = []
        for binding in missing:
            try:
                if (yield from self.register(binding, restore=True)):
                    stored.append(binding.key)
                else:  # dropped by another instance: theirs to decide
                    self.own.pop(binding.key, None)
            except ConfigError as exc:  # another instance stored a different one meanwhile
                self.own.pop(binding.key, None)
                log.warning("registry_restore_conflict %s", exc, extra={"event": "registry_restore_conflict"})
        if stored:
            log.warning("registry_restored namespace=%s bindings=%s: Redis no longer had them (restarted "
                        "without persistence, flushed, or evicted); stored again from this process's "
                        "definitions. Events buffered before are gone with Redis' data.", namespace, stored,
                        extra={"event": "registry_restored"})
        return bool(stored)

    @staticmethod
    def parse(epoch: bytes, raw: dict[bytes, bytes]) -> Snapshot:
        bindings: dict[str, Binding] = {}
        for name, v in sorted(raw.items()):
            try:
                key = as_text(name, "replace")
                bindings[key] = Binding.stored_as(v, key)
            except ConfigError as exc:  # a hostile writer's: the others still take their events
                log.warning("binding_unreadable %s; no event goes to it", exc,
                            extra={"event": "binding_unreadable"})
        routes: dict[str, list[Route]] = {}
        for b in bindings.values():
            routes.setdefault(b.source, []).append(
                Route(b, b.key, split_path(b.batch.key), b"%d" % b.batch.count, b"%d" % b.batch.window_ms)
            )
        return Snapshot(epoch, routes, bindings, dict(raw), True)

    def current_epoch(self) -> Proc[bytes]:
        epoch: bytes = (yield Cmd("get", (self.shards[0].registry_version,))) or b""
        return epoch

    def register(self, binding: Binding, restore: bool = False) -> Proc[bool]:
        """Store `binding` on every shard under one new epoch; a conflict is a ConfigError.
        `restore`: storing again what Redis lost, unless it is dropped (then nothing is written,
        and False returned)."""
        definition = json.dumps(binding.to_dict(), sort_keys=True, separators=(",", ":"))
        epoch = secrets.token_hex(8)
        for i, k in enumerate(self.shards):  # the first shard decides; the others are copies
            stored = yield Eval("register", [k.bindings, k.registry_version, k.dropped],
                                [binding.key, definition, epoch, "1" if restore else "0"])
            if stored == 2 and i == 0:
                return False
            if isinstance(stored, list) or stored == 2:
                if i == 0:
                    existing, state = (x.decode() for x in stored)
                    how = ("is already registered" if state == "registered" else
                           "was dropped (its batches still run under that config)")
                    raise ConfigError(
                        "binding_conflict",
                        f"binding={binding.key!r} {how} with a different config: "
                        f"{_differences(existing, binding.to_dict())}; register the new behaviour "
                        "under a new version",
                    )
                seen = yield Cmd("get", (k.registry_version,))
                yield from self.sync(i, seen or b"")  # a copy out of step
        self.own[binding.key] = binding
        self.invalidate()
        return True

    def unbind(self, binding: str) -> Proc[list[list[bytes]]]:
        """First step of a drop, on every shard: the binding takes no more events (its definition
        moves to `dropped`). Returns each shard's open members of it."""
        self.own.pop(binding, None)
        epoch = secrets.token_hex(8)
        members = []
        known = False
        for k in self.shards:
            reply = yield Eval("unbind", [k.bindings, k.registry_version, k.dropped, k.open_buffers(binding)],
                               [binding, epoch])
            known = known or bool(reply[0]) or bool(reply[1]) or len(reply) > 2
            members.append(list(reply[2:]))
        self.invalidate()
        if not known:  # nothing was written: a typo must not pass for a drop that found nothing
            snap = yield from self.load()
            raise ConfigError("binding_unknown", f"binding={binding!r} is not registered (nor dropped "
                              f"before); registered: {sorted(snap.bindings)} (keys are id@version)")
        return members

    def sync(self, shard: int, seen: bytes) -> Proc[Snapshot]:
        """Copy the first shard's registry onto `shard` (a register/drop that did not reach it),
        read after `shard`'s epoch was seen as `seen`: only while it still is (`sync_registry.lua`).
        Returns the first shard's registry."""
        snap = yield from self.load()
        k = self.shards[shard]
        pairs = [x for kv in snap.raw.items() for x in kv]
        yield Eval("sync_registry", [k.bindings, k.registry_version, k.dropped], [seen, snap.epoch, *pairs])
        return snap


def _differences(stored: str, asked: dict[str, Any]) -> str:
    """`batch.count: 3 stored, 4 asked` for each field that differs (the stored text whole, if it
    is no definition distbatch wrote)."""
    try:
        had = json.loads(stored)
    except ValueError:
        return f"stored {stored}"
    if not isinstance(had, dict):
        return f"stored {stored}"

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(had), flat(asked)
    diff = [f"{k}: {json.dumps(a.get(k))} stored, {json.dumps(b.get(k))} asked"
            for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return "; ".join(diff) or f"stored {stored}"
