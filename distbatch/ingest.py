"""The ingest side as sans-I/O procedures: register, emit, flush, drop — written once.

Each public method returns a procedure (`ops.Proc`): a generator that yields the Redis operations
it needs and is sent their replies. `Batcher` drives them on a sync client, `AsyncBatcher` awaits
them on redis.asyncio; so planning, script arguments, reply decoding and the re-plan after a
registry change are the same code for both APIs.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

from . import codec
from .clock import ManualClock, ServerClock, checked_clock
from .codec import (
    LazyEvents,
    as_text,
    check_round_trip,
    decode_cut,
    decode_events,
    encode_events,
)
from .config import BUFFER_CAP, Binding, RetryPolicy
from .errors import ConfigError, EmitError, PayloadError, describe, short
from .handlers import check_path as check_handler_path
from .handlers import handler as register_handler
from .keys import MEMBER_KEY_LENGTH, build_member, full_misses, member_bytes, member_cap, members_cache
from .logbudget import LogBudget, clipped, shown
from .models import Batch, EmitResult, Event
from .onecall import Known, OneCall, OneHead, Single, one_head
from .ops import Call, Cmd, Eval, Handoff, Proc, Store
from .partition import partition_key
from .registry import Registry, Route, Snapshot
from .scripts import sha_of
from .sent import not_stored
from .shards import Layout, shard_of
from .transport import OUTAGE

log = logging.getLogger("distbatch")

DEFAULT_MAX_PAYLOAD = 1 << 20
_PER_EMITTER_CACHE = 4096
"""Entries kept per (emitting thread, shard or binding) before the cache starts over."""
_WARNED_SOURCES = 1024
_ONLY_STR = {str}
BATCHER_OPTIONS = frozenset({"max_payload_bytes", "chunk_size", "handoff", "on_cut", "shards", "fix_layout"})
"""What `from_url` keeps for the batcher; every other option goes to the redis client."""


@dataclass(slots=True)
class _Item:
    """One event for one binding: where it goes and, once sent, what came of it."""

    event: int
    route: Route
    pkey: str | None
    member: bytes
    shard: int
    result: EmitResult | None = None


_Sent = tuple[dict[int, list[_Item]], list[Any]]
"""Calls made already: the items of each shard's call, and the replies in that order."""


class One(NamedTuple):
    """A single emit, planned: see `Ingest.one`. (A named tuple: a frozen dataclass's
    `__init__` costs a microsecond on this path.)"""

    source: str
    payloads: list[Mapping[str, Any]]
    events: list[bytes]
    item: _Item
    epoch: bytes
    window_now: bytes


class _SendFailed(Exception):
    """Storing a chunk failed part-way (Redis, or a payload read again as the bindings changed):
    `items` of the chunk, `refused` the ids of those known not stored (refused as stale, or
    never sent)."""

    def __init__(self, cause: BaseException, items: list[_Item],
                 refused: frozenset[int] = frozenset()) -> None:
        super().__init__(describe(cause))
        self.cause = cause
        self.items = items
        self.refused = refused


def _emit_error(done: list[_Item], failed: list[_Item], refused: frozenset[int], total: int,
                cause: BaseException) -> EmitError:
    """Which events were stored, which may be, which were not: by index into the payloads."""
    unknown = {it.event for it in failed if it.result is None and id(it) not in refused}
    sent = done + failed
    stored = sorted({it.event for it in sent if it.result is not None} - unknown)
    keep = set(stored)
    results = [it.result for it in sent if it.result is not None and it.event in keep]
    return EmitError(results, stored, sorted(unknown), total, cause)


@dataclass(frozen=True, slots=True)
class FlushStep:
    batches: list[Batch]
    next_deadline_ms: int | None
    """Earliest open window deadline, on the window clock."""
    server_now_ms: int
    more: bool = False
    """The step stopped at its limit: more windows may have run out."""
    lateness_ms: tuple[int, ...] = ()
    """Per batch cut: how long after its deadline (window clock)."""


_SKIPPED = {
    b"none": "its binding is not registered (a drop() cut short?): kept for drop() to return, "
             "looked at again in 60s",
    b"unreadable": "its binding's definition cannot be read: kept, looked at again in 60s",
    b"junk": "no buffer distbatch makes (a member without a binding, or a key that is no list): "
             "no longer tracked, the key left as it is",
}


def _which(exc: PayloadError) -> PayloadError:
    """The same error, framed with the event it names (`encode_events` sets its index)."""
    if exc.event is None:
        return exc
    return PayloadError(exc.code, f"event {exc.event}: {exc}; nothing was stored", event=exc.event,
                        reason=exc.reason)


def _report_skipped(flat: list[bytes]) -> None:
    """One warning per kind for the due buffers a flush could not close (`flush_expired.lua`)."""
    by_why: dict[bytes, list[str]] = {}
    for member, why in zip(flat[::2], flat[1::2], strict=True):
        by_why.setdefault(why, []).append(as_text(member, "replace")[:80])
    for why, members in by_why.items():
        log.warning("buffers_skipped count=%d first=%r: due, but %s", len(members), members[0],
                    _SKIPPED.get(why, as_text(why, "replace")),
                    extra={"event": "buffers_skipped", "why": as_text(why, "replace"), "count": len(members)})


class Ingest:
    """The state an ingesting batcher keeps between calls (layout, cached registry, id and
    argument caches) and its procedures."""

    def __init__(self, layout: Layout, *, cluster: bool, clock: ManualClock | ServerClock | None = None,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD, chunk_size: int = 1000) -> None:
        checked_clock(clock)
        self.layout = layout
        self.shards = layout.keys
        self.keys = self.shards[0]
        self.clock = clock or ServerClock()
        self.max_payload_bytes = positive_int("max_payload_bytes", max_payload_bytes)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.registry = Registry(self.shards, cluster)
        self._cluster = cluster
        self._event_ids = (os.getpid(), secrets.token_hex(6), itertools.count())
        self._heads = [self._head(s) for s in range(layout.count)]
        self._call_keys: dict[tuple[str, int], str] = {}
        self._one_heads: dict[tuple[str, str], OneHead] = {}
        self._known: dict[str, tuple[Snapshot, dict[str | None, Known]]] = {}
        """Per source, for the registry snapshot it was made on: `Single.known`, which threads share."""
        self.queue_key: str | None = None
        """The RQ queue of this namespace's tickets when it lives on the same (standalone) Redis:
        each call passes it, so the hand-off knows how many tickets wait without asking."""
        self._warned_sources: set[str] = set()
        self._unbound_lines, self._overflow_lines = LogBudget(20), LogBudget(20)  # per batcher

    def event_ids_of(self, pid: int) -> tuple[int, str, Iterator[int]]:
        """`event_ids` for a caller that read `os.getpid()` already."""
        ids = self._event_ids
        return ids if ids[0] == pid else (pid, *self.event_ids())

    def event_ids(self) -> tuple[str, Iterator[int]]:
        """This process's event-id prefix and counter. A forked child (also one forked in C,
        without CPython's fork hooks) makes its own, or parent and child would give two events
        the same id. One tuple, read and replaced whole: threads of a child that race here each
        get a consistent pair, and pairs made apart never share a prefix."""
        pid, prefix, ids = self._event_ids
        if pid != os.getpid():
            pid, prefix, ids = self._event_ids = (os.getpid(), secrets.token_hex(6), itertools.count())
        return prefix, ids

    def _head(self, s: int) -> tuple[list[str], list[Any], bytes, dict[str, str]]:
        """What every accumulate call to shard `s` starts with: keys, args, the buffer key prefix,
        and a cache of the open-set key per binding."""
        k = self.shards[s]
        keys = [k.registry_version, "", k.deadlines, k.wake, k.batch_seq, k.bindings, *k.cut]
        return keys, [self.layout.id_prefix(s), k.buffer_prefix], k.buffer_prefix.encode(), {}

    # registry ---------------------------------------------------------------------------

    def register(self, id: str, *, version: str, source: str, batch: Mapping[str, Any],
                 handler: str | Callable[..., Any],
                 retry: Mapping[str, Any] | RetryPolicy | None = None) -> Proc[str]:
        if callable(handler):
            register_handler(handler)
        binding = Binding.build(id, version=version, source=source, batch=batch, handler=handler, retry=retry)
        if not callable(handler):
            check_handler_path(binding.handler)
        yield from self.registry.register(binding)
        return binding.key

    def bindings(self) -> Proc[dict[str, Binding]]:
        snap = yield from self.registry.load()
        return dict(snap.bindings)

    def binding(self, key: str) -> Proc[Binding | None]:
        snap = yield from self.registry.snapshot()
        if key not in snap.bindings:
            snap = yield from self.registry.load()
        return snap.bindings.get(key)

    # emitting ---------------------------------------------------------------------------

    def emit_many(self, source: str, payloads: Iterable[Mapping[str, Any]]) -> Proc[list[EmitResult]]:
        checked_source(source)
        checked_payloads(payloads)
        now = self.clock.now_ms()
        stamp = now if now is not None else int(time.time() * 1000)
        prefix, ids = self.event_ids()
        limit = self.max_payload_bytes
        payload_list = payloads if isinstance(payloads, list) else list(payloads)
        codec.begin()
        try:
            only_dicts = {*map(type, payload_list)} == codec.ONLY_DICTS  # one pass, for both
            events = encode_events(ids, prefix, source, stamp, payload_list, limit, only_dicts)
        except PayloadError as exc:
            raise _which(exc) from exc.__cause__
        if not events:
            return []
        if codec.unusual():  # a tuple, a subclass...: only then can a payload fail to decode
            check_round_trip(events, payload_list)
        try:  # Redis away while the bindings are read: an EmitError as any other (it was a bare
            # ConnectionError, which a caller that re-sends `not_sent` did not catch)
            reg = self.registry.cached
            if not reg.loaded:
                reg = yield from self.registry.load()
            routes = reg.routes.get(source, [])
            if not routes:
                reg = yield from self._recheck_unbound(source, reg)
                routes = reg.routes.get(source, [])
                if not routes:
                    return []
        except OUTAGE as exc:  # on a cluster, also a node down (a read redis-py drives itself)
            raise EmitError([], [], [], len(payload_list), exc) from exc
        window_now = b"" if now is None else b"%d" % now
        return (yield from self._emit_compact(source, reg, routes, payload_list, events, window_now,
                                              self.chunk_size, only_dicts))

    def _send_chunks(self, source: str, reg: Snapshot, payload_list: list[Mapping[str, Any]],
                     items: list[_Item], per_event: int, window_now: bytes, events: list[bytes],
                     done: list[_Item], size: int, sent: _Sent | None = None) -> Proc[list[EmitResult]]:
        """Store items planned under `reg` (`per_event` to an event) in chunks of about `size`
        items (the call's chunk size, read once), after `done`: the items stored before them.
        Every chunk goes under the epoch of the registry it was planned with: a chunk refused as
        stale is planned again (`_send`), and so is the rest of the call, at once, under the
        bindings just read, so it never goes into a binding that is gone nor is refused chunk by
        chunk. `sent`: the first chunk's calls were made already (by shard, with their replies)."""
        start = 0
        while start < len(items):
            step = max(1, size // per_event) * per_event
            chunk = items[start : start + step]
            try:
                stored, now = yield from self._send(source, reg, payload_list, chunk, window_now, events,
                                                    sent)
            except _SendFailed as err:
                raise _emit_error(done, err.items, err.refused, len(events), err.cause) from err.cause
            except OUTAGE as exc:  # a read between two chunks' calls (on a cluster, its own errors
                # too): what was stored said, nothing else sent (a bare error said neither)
                raise _emit_error(done, [], frozenset(), len(events), exc) from exc
            done += stored
            sent = None
            start += len(chunk)
            if now is not reg and start < len(items):  # the rest: planned under the bindings now
                reg, first = now, items[start].event
                routes = reg.routes.get(source, [])
                try:
                    items, start = self.plan(routes, payload_list[first:], offset=first), 0
                except PayloadError as exc:  # stored so far: stored; the rest not sent
                    raise _emit_error(done, [], frozenset(), len(events), exc) from exc
                per_event = max(1, len(routes))
        return [it.result for it in done if it.result is not None]

    def _emit_compact(self, source: str, reg: Snapshot, routes: list[Route],
                      payloads: list[Mapping[str, Any]], events: list[bytes], window_now: bytes,
                      size: int, only_dicts: bool) -> Proc[list[EmitResult]]:
        """`emit_many` without an object per (event, binding) item: objects that live through a
        call's round trip are what the caller's cyclic collector promotes, and enough promotions
        set off a full collection of the caller's whole heap (`tests/test_allocation.py`). Item
        `j` is event `j // R` for binding `j % R` (R bindings), as `plan` orders them. Every
        chunk goes under the epoch of `reg`, the registry it was planned with. A chunk whose
        replies are not plain (a stale registry, a failure) is handed, with its replies, to the
        general path, which plans again or reports."""
        nr = len(routes)
        keyed = [self._keys_of(r, payloads, 0, only_dicts) for r in routes]
        pkeys, members = [k[0] for k in keyed], [k[1] for k in keyed]
        n = self.layout.count
        shards = [[shard_of(m, n) for m in ms] for ms in members] if n > 1 else None
        noted: dict[int, dict[str, Any]] = {}  # what the replies said of an item: the few cut or capped
        new = tuple.__new__  # a named tuple without its Python-level __new__

        def where(idx: Sequence[int]) -> Callable[[int], tuple[str, str | None]]:
            return lambda k: (routes[idx[k] % nr].key, pkeys[idx[k] % nr][idx[k] // nr])

        def results(stop: int) -> list[EmitResult]:
            """Items 0..stop-1, stored: made at the end, so none lives through a round trip."""
            if nr == 1:  # in C: one made per event
                out = list(map(new, repeat(EmitResult), zip(repeat(routes[0].key), pkeys[0], repeat(None),
                                                            repeat(0), repeat(None), range(stop))))
            else:
                out = [new(EmitResult, (routes[j % nr].key, pkeys[j % nr][j // nr], None, 0, None, j // nr))
                       for j in range(stop)]
            for j, note in noted.items():
                if j < stop:
                    out[j] = EmitResult(routes[j % nr].key, pkeys[j % nr][j // nr], event=j // nr, **note)
            return out

        def item(j: int, result: EmitResult | None = None) -> _Item:
            e, r = divmod(j, nr)
            shard = 0 if shards is None else shards[r][e]
            return _Item(e, routes[r], pkeys[r][e], members[r][e], shard, result)

        total, step = len(events) * nr, max(1, size // nr) * nr
        for start in range(0, total, step):
            stop = min(start + step, total)
            groups: dict[int, Sequence[int]]
            if shards is None:
                groups = {0: range(start, stop)}
            else:
                grouped: dict[int, list[int]] = {}
                for j in range(start, stop):
                    grouped.setdefault(shards[j % nr][j // nr], []).append(j)
                groups = dict(grouped)
            replies = yield Store(partial(self._compact_calls, routes, members, groups, reg.epoch, window_now,
                                          events))
            if any(isinstance(r, BaseException) or r[0] == -1 for r in replies):
                done = [item(j, r) for j, r in enumerate(results(start))]
                rest = [item(j) for j in range(start, total)]
                sent = {s: [rest[j - start] for j in idx] for s, idx in groups.items()}, replies
                return (yield from self._send_chunks(source, reg, payloads, rest, nr, window_now, events,
                                                     done, size, sent))
            cuts: list[str] = []
            queued = -1
            for idx, reply in zip(groups.values(), replies, strict=True):
                if reply[0] == -2:  # ran before, its reply lost: the resend says what it reported
                    reply = reply[1:]
                    if not reply:
                        continue
                elif self.queue_key is not None:
                    queued = max(queued, reply.pop())  # the queue's length ends the reply
                notes, cut = self._notes(reply, where(idx))
                for k, note in notes.items():
                    noted[idx[k]] = note
                cuts += cut
            if cuts or any(r[0] == -2 for r in replies):
                yield Handoff(cuts, queued if cuts else -1)
        return results(total)

    def _compact_calls(self, routes: list[Route], members: list[list[bytes]],
                       groups: dict[int, Sequence[int]], epoch: bytes, window_now: bytes,
                       events: list[bytes], emitter: str, calls: Iterator[int]) -> list[Call]:
        """One accumulate call per shard of `_emit_compact`'s items (`j`: event `j // R`, binding
        `j % R`); as `_call` builds them, with only the bindings a shard's items go to."""
        nr = len(routes)
        out: list[Call] = []
        for shard, idx in groups.items():
            if nr == 1:
                keys, args, prefix = self._frame(shard, routes, epoch, next(calls), emitter, window_now)
                if isinstance(idx, range):  # one shard: the whole chunk, in order
                    keys += map(prefix.__add__, members[0][idx.start : idx.stop])
                    args += events[idx.start : idx.stop]
                else:
                    keys += [prefix + members[0][i] for i in idx]
                    args += [events[i] for i in idx]
            else:
                numbers: dict[int, int] = {}
                for j in idx:
                    numbers.setdefault(j % nr, len(numbers) + 1)
                keys, args, prefix = self._frame(shard, [routes[r] for r in numbers], epoch, next(calls),
                                                 emitter, window_now)
                keys += [prefix + members[j % nr][j // nr] for j in idx]
                if len(numbers) == 1:
                    args += [events[j // nr] for j in idx]
                else:
                    for j in idx:
                        args += (numbers[j % nr], events[j // nr])
            keys += self._tail(shard)
            out.append((keys, args))
        return out

    def _tail(self, shard: int) -> list[str]:
        """The optional last keys of an accumulate call: the ticket queue when it lives on this
        Redis (its length comes back when the call cuts; "" stands for none), then the workers'
        bell the call rings. Not on a cluster: there the queue lives elsewhere and "" would name
        a slot of its own, and workers poll."""
        if self._cluster:
            return []
        return [self.queue_key or "", self.shards[shard].bell]

    def emit_one(self, source: str, payload: Mapping[str, Any]) -> Proc[list[EmitResult]]:
        """`emit_many(source, [payload])`, straight through in the common case (`one`)."""
        one = self.one(source, payload)
        if one is None:
            return (yield from self.emit_many(source, [payload]))
        (reply,) = yield Store(partial(self._one_calls, one), "accumulate_one")
        return (yield from self.one_done(one, reply))

    def one(self, source: str, payload: Mapping[str, Any]) -> One | None:
        """A single emit planned without a procedure, in the common case (one shard, one binding,
        registry loaded, a plain dict payload that fits): None otherwise, and the general path
        takes it (and names what is wrong with it). A single emit is where per-call Python shows:
        after the round trip's context switch every line of it runs about twice as slow on cold
        caches."""
        reg = self.registry.cached
        routes = reg.routes.get(source) if reg.loaded and self.layout.count == 1 else None
        if routes is None or len(routes) != 1 or type(payload) is not dict:
            return None
        route = routes[0]
        now = self.clock.now_ms()
        prefix, ids = self.event_ids()
        data = codec.encode_plain(f"{prefix}-{next(ids):x}", source,
                                  now if now is not None else int(time.time() * 1000), payload)
        if data is None or len(data) > self.max_payload_bytes:
            return None
        path, pkey, member = route.path, None, None
        if path is None:  # no partition key
            member = members_cache(route.key).get(None)
        elif len(path) == 1:
            pkey = payload.get(path[0])
            member = members_cache(route.key).get(pkey) if type(pkey) is str else None
        if member is not None:  # the common cases of _plan_route, inlined
            item = _Item(0, route, pkey, member, 0)
        else:
            try:
                (item,) = self._plan_route(route, [payload], 0)
            except PayloadError:
                return None  # the general path raises it, naming the event
        return One(source, [payload], [data], item, reg.epoch, b"" if now is None else b"%d" % now)

    def one_call(self, one: One, emitter: str, call_id: int, keep_ttl: bool = False) -> OneCall:
        """The `accumulate_one` call of `one`: all but its last key and four arguments are built
        and packed once per emitting thread, binding and registry epoch (`onecall`). `keep_ttl`:
        the emitter's call key had its TTL set recently (`transport.Emitter`)."""
        route = one.item.route
        head = self._one_heads.get((emitter, route.key))
        if head is None or head.route is not route or head.epoch != one.epoch:
            if len(self._one_heads) >= _PER_EMITTER_CACHE:  # threads come and go: stay bounded
                self._one_heads.clear()
            head = self._one_heads[emitter, route.key] = self._one_head(route, one.epoch, emitter)
        key = self._heads[0][2] + one.item.member
        return OneCall(head, key, one.window_now, call_id, one.events[0], keep_ttl)

    def _one_head(self, route: Route, epoch: bytes, emitter: str) -> OneHead:
        head_keys, head_args, _, _ = self._heads[0]
        keys = [head_keys[0], self.keys.call(emitter), *head_keys[2:], self.keys.open_buffers(route.key),
                *self._tail(0)]
        args = [epoch, BUFFER_CAP, *head_args, route.key, route.count, route.window]
        return one_head(route, epoch, keys, args, sha_of("accumulate_one"))

    def single(self, source: str, emitter: str) -> Single | None:
        """What `Batcher.emit` keeps for one thread's single emits to `source` on the registry
        as cached now (`onecall.Single`); None where they take the planned path: the registry
        not loaded yet, several shards or bindings, Redis Cluster, a partition key of more than
        one field."""
        reg = self.registry.cached
        one_redis = self.layout.count == 1 and not self._cluster
        routes = reg.routes.get(source) if reg.loaded and one_redis else None
        if routes is None or len(routes) != 1 or (routes[0].path is not None and len(routes[0].path) != 1):
            return None
        known = self._known.get(source)
        if known is None or known[0] is not reg:
            if len(self._known) >= 256:  # sources come and go: stay bounded
                self._known.clear()
            known = self._known[source] = (reg, {})
        return Single(reg, self._one_head(routes[0], reg.epoch, emitter), self._heads[0][2],
                      2 if self.queue_key is not None else 1, known[1])

    def single_done(self, single: Single, source: str, payload: Mapping[str, Any], event: bytes,
                    known: Known, window_now: bytes, reply: Any) -> Proc[list[EmitResult]]:
        """`one_done` for a call `Batcher.emit` sent whose reply says more than "stored"."""
        route = single.head.route
        pkey = known[1].partition_key
        item = _Item(0, route, pkey, known[2], 0)
        one = One(source, [payload], [event], item, single.snapshot.epoch, window_now)
        return (yield from self.one_done(one, reply))

    def _one_calls(self, one: One, emitter: str, calls: Iterator[int]) -> list[Call]:
        return [self.one_call(one, emitter, next(calls)).lists()]

    def one_done(self, one: One, reply: Any) -> Proc[list[EmitResult]]:
        """Whatever the reply says: a failure, a stale registry (planned again on the new one),
        a resend that ran before, cuts to hand off."""
        items = [one.item]
        if isinstance(reply, BaseException):
            refused = frozenset(id(it) for it in items) if not_stored(reply) else frozenset()
            raise _emit_error([], items, refused, 1, reply) from reply
        if reply[0] == -1:  # the registry changed (nothing was stored): plan again on the new one
            try:
                yield from self.registry.load()
            except OUTAGE as exc:
                raise _emit_error([], items, frozenset(id(it) for it in items), 1, exc) from exc
            return (yield from self.emit_many(one.source, one.payloads))
        queued = reply.pop() if self.queue_key is not None and reply[0] != -2 else -1
        cuts = self.results(items, reply)
        if cuts or reply[0] == -2:
            yield Handoff(cuts, queued if cuts else -1)
        return [one.item.result] if one.item.result is not None else []


    def _recheck_unbound(self, source: str, reg: Snapshot) -> Proc[Snapshot]:
        """No binding for `source` in our copy: maybe one was registered since; one GET tells.
        Returns the registry to plan with (and send under)."""
        if (yield from self.registry.current_epoch()) != reg.epoch:
            reg = yield from self.registry.load()
        if not reg.routes.get(source):
            self._warn_unbound(source)
        return reg

    def plan(self, routes: list[Route], payloads: Sequence[Mapping[str, Any]],
             offset: int = 0) -> list[_Item]:
        """Every (event, binding) item with its partition key, buffer member and shard, in event
        order (and route order within an event)."""
        per_route = [self._plan_route(r, payloads, offset) for r in routes]
        if len(per_route) == 1:
            return per_route[0]
        return [it for group in zip(*per_route, strict=True) for it in group]

    def _plan_route(self, r: Route, payloads: Sequence[Mapping[str, Any]], offset: int) -> list[_Item]:
        pkeys, members = self._keys_of(r, payloads, offset)
        n = self.layout.count
        return [_Item(i, r, pkey, member, shard_of(member, n) if n > 1 else 0)
                for i, pkey, member in zip(range(offset, offset + len(pkeys)), pkeys, members, strict=True)]

    def _keys_of(self, r: Route, payloads: Sequence[Mapping[str, Any]], offset: int,
                 only_dicts: bool | None = None) -> tuple[list[str | None], list[bytes]]:
        """Each payload's partition key and buffer member for route `r`, in order; a payload
        without a usable key raises, naming it by its number (from `offset`). `only_dicts`: as
        `codec.encode_events` takes it."""
        key, path = r.key, r.path
        cache = members_cache(key)  # the hot path inlines member_bytes
        field = path[0] if path is not None and len(path) == 1 else None
        # A full cache means more live keys than it holds (1M open buffers): building the member
        # then costs less than a lookup that misses in a big dict, so build it straight away.
        cap = member_cap()
        full = len(cache) >= cap
        if path is None:  # no partition key: one buffer
            return [None] * len(payloads), [member_bytes(key, None)] * len(payloads)
        if only_dicts is None:
            only_dicts = {*map(type, payloads)} == codec.ONLY_DICTS
        if field is not None and not full and only_dicts:
            # the common case in C: a one-field key, a string in every payload, every member cached
            try:
                keys: list[str | None] = list(map(itemgetter(field), payloads))
                if {*map(type, keys)} == _ONLY_STR:
                    return keys, list(map(cache.__getitem__, keys))
            except KeyError:
                pass  # the loop builds what is missing, or names a payload without its key
        pkeys: list[str | None] = []
        members: list[bytes] = []
        add_pkey, add_member = pkeys.append, members.append
        cached = cache.get
        missed = 0
        common = key + "|="
        for i, payload in enumerate(payloads, offset):
            # the common case inline: a one-field key whose value is a string
            if field is not None and type(payload) is dict:
                pkey = payload.get(field)
                if type(pkey) is not str:
                    pkey = self._pkey(payload, r, i)
            else:
                pkey = self._pkey(payload, r, i)
            if full:
                if pkey is not None and pkey.isascii() and pkey.isalnum():  # build_member, inlined
                    member = (common + pkey).encode()
                else:
                    member = build_member(key, pkey)
                missed += 1
            else:
                hit = cached(pkey)
                if hit is None:
                    hit = build_member(key, pkey)
                    if len(cache) >= cap:
                        full = True
                        missed += 1
                    elif pkey is None or len(pkey) <= MEMBER_KEY_LENGTH:
                        cache[pkey] = hit
                member = hit
            add_pkey(pkey)
            add_member(member)
        if missed:
            full_misses(cache, missed)
        return pkeys, members

    @staticmethod
    def _pkey(payload: Mapping[str, Any], r: Route, i: int) -> str | None:
        try:
            return partition_key(payload, r.path)
        except Exception as exc:
            raise PayloadError(
                "partition_key",
                f"event {i}: the partition key at batch.key={r.binding.batch.key!r} of "
                f"binding={r.key!r} cannot be read: {describe(exc)}; nothing was stored", event=i,
            ) from exc

    def _warn_unbound(self, source: str) -> None:
        """Once per source, among the latest `_WARNED_SOURCES` unbound ones: a caller that sends
        ever new source names (through `serve`, say) must not grow this process without bound,
        nor write megabytes per line."""
        if source in self._warned_sources:
            return
        more = self._unbound_lines.take(source)  # a caller inventing names: a line per request
        if more is None:  # not named yet: its next emit tries again (a typo among inventions)
            return
        if len(self._warned_sources) >= _WARNED_SOURCES:
            self._warned_sources.clear()
        self._warned_sources.add(source)
        named = shown(source)
        log.warning(
            "source_unbound source=%s namespace=%r: no trigger is bound to this source, events "
            "emitted to it are not stored (a typo, or the wrong namespace?)%s",
            named, self.keys.namespace, more, extra={"event": "source_unbound", "source": named},
        )

    def _send(self, source: str, reg: Snapshot, payloads: Sequence[Mapping[str, Any]], chunk: list[_Item],
              window_now: bytes, events: list[bytes],
              sent: _Sent | None = None) -> Proc[tuple[list[_Item], Snapshot]]:
        """Store a chunk planned under `reg`: one call per shard, under `reg`'s epoch (not the
        cache's, which another thread may have moved on: the plan would go in unchecked). Items
        refused as stale (the registry changed) are planned again under the new registry: an
        event none of whose items was stored gets the new routes; one stored in part keeps its
        other bindings and loses only dropped ones. `sent`: the chunk's calls were made already
        (by shard, with their replies): only the replies are read. Returns the chunk's items and
        the registry its last calls went under (`reg` itself if the bindings did not change)."""
        final: dict[int, list[_Item]] | None = None  # per event; built only after a stale reply

        def in_order() -> list[_Item]:
            return chunk if final is None else [it for e in sorted(final) for it in final[e]]

        pending = chunk
        one_shard = self.layout.count == 1
        for _ in range(10):
            by_shard: dict[int, list[_Item]]
            if sent is not None:
                by_shard, replies = sent
                sent = None
            else:
                if one_shard:
                    by_shard = {0: pending}
                else:
                    by_shard = {}
                    for it in pending:
                        by_shard.setdefault(it.shard, []).append(it)
                replies = yield Store(partial(self._calls, by_shard, reg.epoch, window_now, events))
            shards = list(by_shard)
            stale: list[_Item] = []
            seen: dict[int, bytes] = {}  # a stale shard's epoch, as its refusal said
            cuts: list[str] = []
            queued = -1
            failed: BaseException | None = None
            unsent: list[_Item] = []
            for s, reply in zip(shards, replies, strict=True):
                if isinstance(reply, BaseException):
                    failed = reply
                    if not_stored(reply):
                        unsent += by_shard[s]
                elif reply[0] == -1:
                    stale += by_shard[s]
                    seen[s] = reply[1] if len(reply) > 1 else b""
                else:
                    if self.queue_key is not None and reply[0] != -2:
                        queued = max(queued, reply.pop())  # the queue's length ends the reply
                    cuts += self.results(by_shard[s], reply)
            if cuts or any(not isinstance(r, BaseException) and r[0] == -2 for r in replies):
                yield Handoff(cuts, queued if cuts else -1)
            if failed is not None:
                raise _SendFailed(failed, in_order(), frozenset(id(it) for it in (*unsent, *stale)))
            if not stale:
                break
            if final is None:
                final = {}
                for it in chunk:
                    final.setdefault(it.event, []).append(it)
            try:  # the first shard's registry, then each other stale shard brought up to it, read
                # after that shard's refusal: a register or drop under way changes the first shard
                # first, so the copy only moves forward (or is left to what changed it meanwhile)
                reg = yield from self.registry.load()
                for s in seen:
                    if s != 0:
                        reg = yield from self.registry.sync(s, seen[s])
            except OUTAGE as exc:
                raise _SendFailed(exc, in_order(), frozenset(id(it) for it in stale)) from exc
            live = {r.key for rs in reg.routes.values() for r in rs}
            pending = []
            for e in sorted({it.event for it in stale}):
                if all(it.result is None for it in final[e]):  # nothing stored yet: new routes
                    try:  # a payload read again (a new binding's key): what it raises is no
                        # "nothing was stored" once other items are; the items left go unsent
                        final[e] = self.plan(reg.routes.get(source, []), [payloads[e]], offset=e)
                    except PayloadError as exc:
                        raise _SendFailed(exc, in_order(), frozenset(
                            id(it) for it in in_order() if it.result is None)) from exc
                    pending += final[e]
                else:
                    final[e] = [it for it in final[e] if it.result is not None or it.route.key in live]
                    pending += [it for it in final[e] if it.result is None]
            if not pending:
                break
        else:
            gave_up = RuntimeError("bindings kept changing while emitting; gave up")
            never = frozenset(id(it) for it in in_order() if it.result is None)
            raise _SendFailed(gave_up, in_order(), never)
        return in_order(), reg

    def _calls(self, by_shard: dict[int, list[_Item]], epoch: bytes, window_now: bytes,
               events: list[bytes], emitter: str, calls: Iterator[int]) -> list[Call]:
        return [self._call(s, items, epoch, next(calls), emitter, window_now, events)
                for s, items in by_shard.items()]

    def _call(self, shard: int, items: list[_Item], epoch: bytes, call_id: int, emitter: str,
              window_now: bytes, events: list[bytes]) -> Call:
        routes: dict[str, int] = {}
        route_list: list[Route] = []
        for it in items:
            if it.route.key not in routes:
                routes[it.route.key] = len(routes) + 1
                route_list.append(it.route)
        keys, args, prefix = self._frame(shard, route_list, epoch, call_id, emitter, window_now)
        keys += [prefix + it.member for it in items]
        keys += self._tail(shard)
        if len(routes) == 1:
            args += [events[it.event] for it in items]
        else:
            for it in items:
                args += (routes[it.route.key], events[it.event])
        return keys, args

    def _frame(self, shard: int, route_list: list[Route], epoch: bytes, call_id: int, emitter: str,
               window_now: bytes) -> tuple[list[Any], list[Any], bytes]:
        """An accumulate call's keys and arguments but the items', and the buffer key prefix."""
        head_keys, head_args, prefix, opens = self._heads[shard]
        call_key = self._call_keys.get((emitter, shard))
        if call_key is None:
            if len(self._call_keys) >= _PER_EMITTER_CACHE:  # threads come and go: stay bounded
                self._call_keys.clear()
            call_key = self._call_keys[emitter, shard] = self.shards[shard].call(emitter)
        k = self.shards[shard]
        open_keys = [opens.get(r.key) or opens.setdefault(r.key, k.open_buffers(r.key)) for r in route_list]
        keys: list[Any] = [head_keys[0], call_key, *head_keys[2:], *open_keys]
        args: list[Any] = [epoch, call_id, window_now, BUFFER_CAP, *head_args, len(route_list)]
        for r in route_list:
            args += (r.key, r.count, r.window)
        return keys, args, prefix

    def results(self, items: list[_Item], reply: list[Any]) -> list[str]:
        """Fill each item's result; the reply lists only items that cut, closed or overflowed.
        Returns the ids of the batches cut (to hand off)."""
        new = tuple.__new__  # a named tuple without its Python-level __new__: one per item
        for it in items:
            it.result = new(EmitResult, (it.route.key, it.pkey, None, 0, None, it.event))
        if reply[0] == -2:  # ran before, its reply lost: the resend says what it reported
            reply = reply[1:]
            if not reply:
                return []
        notes, cuts = self._notes(reply, lambda n: (items[n].route.key, items[n].pkey))
        for i, note in notes.items():
            it = items[i]
            it.result = EmitResult(it.route.key, it.pkey, event=it.event, **note)
        return cuts

    def _notes(self, reply: list[Any], where: Callable[[int], tuple[str, str | None]]
               ) -> tuple[dict[int, dict[str, Any]], list[str]]:
        """What a stored call's reply says of the items it lists (cut, closed or overflowed), by
        item number from 0, and the ids of the batches cut (to hand off). `where`: an item's
        binding and partition key."""
        cut_ms = reply[0]
        notes: dict[int, dict[str, Any]] = {}
        cuts: list[str] = []
        fields = iter(reply)
        next(fields)
        dropped: dict[tuple[str, str | None], int] = {}  # per buffer: one log line per call, not per event
        for item, kind, batch_id, blob in zip(fields, fields, fields, fields, strict=True):
            binding, pkey = where(item - 1)
            note = notes.setdefault(item - 1, {})
            if kind == b"overflow":
                note["overflowed"] = 1
                dropped[binding, pkey] = dropped.get((binding, pkey), 0) + 1
                continue
            bid = batch_id.decode()
            if kind == b"count":
                note["batch"] = Batch(bid, binding, pkey, "count", LazyEvents(blob), cut_at_ms=cut_ms)
                cuts.append(bid)
            else:
                discarded = kind == b"discard"
                note["expired"] = Batch(bid, binding, pkey, "expired", LazyEvents(blob),
                                        discarded=discarded, cut_at_ms=cut_ms)
                if not discarded:
                    cuts.append(bid)
                else:  # as the sweeper says of the windows it discards
                    log.info("batch_discarded binding=%s partition=%s events=%d", binding, shown(pkey),
                             len(note["expired"].events),
                             extra={"event": "batch_discarded", "binding": binding})
        for (binding, pkey), n in dropped.items():
            more = self._overflow_lines.take()  # a line per emit into a full buffer, at the producer's rate
            if more is not None:
                log.warning(
                    "buffer_overflow binding=%s partition=%s: buffer at its cap of %d events, %d oldest "
                    "event(s) dropped%s", binding, shown(pkey), BUFFER_CAP, n, more,
                    extra={"event": "buffer_overflow", "binding": binding, "partition": clipped(pkey),
                           "dropped": n},
                )
        return notes, cuts

    # expiry and drop --------------------------------------------------------------------

    def flush_expired(self, limit: int = 1000) -> Proc[list[Batch]]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError("limit_invalid", f"limit={limit!r} must be an integer >= 1")
        batches: list[Batch] = []
        for s in range(self.layout.count):
            while True:
                step = yield from self.flush_step(limit, with_events=True, shard=s)
                batches.extend(step.batches)
                if not step.more:
                    break
        return batches

    def flush_step(self, limit: int, *, with_events: bool, shard: int = 0) -> Proc[FlushStep]:
        """One bounded flush of one shard; also says when its next window runs out.

        The buffers whose windows ran out are read first (`due_buffers.lua`, read-only) and
        passed to the flush script, which checks each deadline again: every key it touches is
        named up front. With nothing due it is that one read, O(log N).
        """
        k = self.shards[shard]
        now = self.clock.now_ms()
        window_now = "" if now is None else now
        peek = yield Eval("due_buffers", [k.deadlines], [window_now, limit])
        due: list[bytes] = peek[2:]
        if not due:
            return FlushStep([], None if int(peek[1]) < 0 else int(peek[1]), int(peek[0]))
        prefix = k.buffer_prefix.encode()
        keys: list[Any] = [k.deadlines, k.batch_seq, k.bindings, *k.cut, k.kept(secrets.token_hex(8)), k.bell]
        for m in due:  # a member that is no text is a hostile writer's: the script says so
            keys += (prefix + m, k.open_buffers(as_text(m, "replace").partition("|")[0]))
        reply = yield Eval("flush_expired", keys,
                           [window_now, self.layout.id_prefix(shard), k.buffer_prefix, int(with_events)])
        _report_skipped(reply[3])
        batches = [decode_cut(row) for row in reply[4:]]
        for b, row in zip(batches, reply[4:], strict=True):
            if b.discarded:  # without events, the row counts them (a resent call's rows have them)
                log.info(
                    "batch_discarded binding=%s partition=%r events=%d",
                    b.binding, b.partition_key, len(b.events) if with_events else int(row[7]),
                    extra={"event": "batch_discarded", "binding": b.binding},
                )
        cuts = [b.id for b in batches if not b.discarded]
        if cuts:
            yield Handoff(cuts)
        more = len(due) == limit
        return FlushStep(batches, None if reply[0] == -1 else int(reply[0]), int(reply[1]), more,
                         tuple(int(row[6]) for row in reply[4:]))

    def drop(self, binding: str) -> Proc[list[Event]]:
        if not isinstance(binding, str):
            raise ConfigError("binding_type", f"binding={binding!r} must be a binding key like 'digest@v1'")
        members = yield from self.registry.unbind(binding)  # first: no shard takes events for it any more
        events: list[Event] = []
        for k, open_members in zip(self.shards, members, strict=True):
            prefix = k.buffer_prefix.encode()
            while True:
                reply = yield Eval("drain_buffers", [k.deadlines, k.stats, k.open_buffers(binding),
                                                     k.kept(secrets.token_hex(8)), k.bindings,
                                                     *(prefix + m for m in open_members)],
                                   [binding, k.buffer_prefix])
                for i in range(1, len(reply), 3):
                    try:
                        events.extend(decode_events(reply[i + 2], int(reply[i + 1])))
                    except codec.UNDECODABLE as exc:  # spoiled by another language's emitter: go on
                        log.warning("drop_undecodable binding=%s buffer=%s: its events, dropped and counted, "
                                    "cannot be returned: %s", binding, as_text(reply[i], "replace"), exc,
                                    extra={"event": "drop_undecodable", "binding": binding})
                if int(reply[0]) == -1:  # taken back meanwhile: what its buffers hold is its own
                    log.warning("drop_overtaken binding=%s: registered again while this drop ran; its "
                                "buffers on shard %s are left to it", binding, k.tag,
                                extra={"event": "drop_overtaken", "binding": binding})
                    break
                if int(reply[0]) == 0:
                    break
                open_members = list((yield Cmd("smembers", (k.open_buffers(binding),))))
        return events

    def counters(self) -> Proc[dict[str, int]]:
        total: dict[str, int] = {}
        for k in self.shards:
            for name, value in (yield Cmd("hgetall", (k.stats,))).items():
                try:
                    total[as_text(name)] = total.get(as_text(name), 0) + int(value)
                except (TypeError, ValueError):  # not distbatch's (a hostile writer's): left out
                    continue
        return total

    def open_buffers(self) -> Proc[int]:
        n = 0
        for k in self.shards:
            n += int((yield Cmd("zcard", (k.deadlines,))))
        return n

    @staticmethod
    def server_ms() -> Proc[int]:
        seconds, micros = yield Cmd("time")
        return int(seconds) * 1000 + int(micros) // 1000


def positive_int(option: str, value: object) -> int:
    """A size option, checked where it is given: unchecked, a string or None was a bare
    TypeError at the first `emit_many`, naming neither the option nor the value."""
    if type(value) is not int or value < 1:
        raise ConfigError(f"{option}_invalid",
                          f"{option}={short(value)} must be a whole number of at least 1")
    return value


def checked_payloads(payloads: object) -> None:
    """One payload where `emit_many` takes many: said before it is iterated (a dict's keys, a
    string's characters would each be refused as "no mapping")."""
    if not isinstance(payloads, list) and isinstance(payloads, Mapping | str | bytes):
        raise PayloadError("payloads_type", f"payloads={short(payloads)} is one "
                           f"{type(payloads).__name__}: emit_many takes a list (an iterable) of "
                           "payloads; emit takes one")


def checked_source(source: object) -> None:
    """A source that is no string never matches a binding: said, not a TypeError deep inside."""
    if type(source) is not str:
        raise ConfigError("source_type", f"source={source!r} must be a string, not {type(source).__name__}")
