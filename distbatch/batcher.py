"""Batcher: register triggers, emit events, cut and flush batches (ingest; all state in Redis).

What happens to a batch after its cut lives in `records.py` (claim, lease, complete, fail) and
`dispatch.py` (hand-off to the workers).
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from .clock import ManualClock, ServerClock
from .codec import LazyEvents, decode_cut, decode_events, encode_event
from .config import BUFFER_CAP, Binding, RetryPolicy
from .dispatch import Dispatcher
from .errors import ConfigError, EmitError, PayloadError
from .handlers import handler as register_handler
from .keys import Keys, member_bytes
from .models import Batch, EmitResult, Event
from .partition import partition_key, split_path
from .records import Records
from .scripts import Scripts

log = logging.getLogger("distbatch")

DEFAULT_MAX_PAYLOAD = 1 << 20
OnCut = Callable[[Sequence[str]], object]
"""Called with the ids of batches just cut (empty when a cut may have happened but its ids were
lost with a reply); the default hands them to the workers (`Dispatcher`)."""
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


@dataclass(frozen=True, slots=True)
class _Route:
    binding: Binding
    key: str
    path: tuple[str, ...] | None
    count: bytes
    window: bytes


@dataclass(frozen=True, slots=True)
class _Registry:
    """One consistent read of the bindings: routes and the epoch they were read at, swapped as a
    whole so an emit never pairs new routes with an old epoch (or the reverse)."""

    epoch: bytes = b""
    routes: dict[str, list[_Route]] = field(default_factory=dict)
    bindings: dict[str, Binding] = field(default_factory=dict)
    loaded: bool = False


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where each event goes under one registry snapshot: (binding, partition key, member) per
    event and route, computed for the whole call before anything is written."""

    registry: _Registry
    routes: list[_Route]
    placed: list[tuple[str, str | None, bytes]]
    offset: int


class _Stale(Exception):
    """The registry changed: nothing was written; plan again and resend."""


@dataclass(frozen=True, slots=True)
class FlushStep:
    batches: list[Batch]
    next_deadline_ms: int | None
    """Earliest open window deadline, on the window clock."""
    server_now_ms: int


class Batcher:
    """Front door of distbatch. Safe to share between threads; many instances share one Redis.

    By default every batch it cuts is handed to the workers at once (`handoff=True`): a ticket is
    enqueued on the namespace's RQ queue (on `queue_client`, default the same Redis). Pass
    `handoff=False` for a batcher that only ingests (a sweeper then hands its batches off), or
    `on_cut=` for a hook of your own.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = "distbatch",
        clock: ManualClock | ServerClock | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        chunk_size: int = 1000,
        handoff: bool = True,
        queue_client: redis.Redis | None = None,
        on_cut: OnCut | None = None,
    ) -> None:
        if isinstance(client, redis.asyncio.Redis) or inspect.iscoroutinefunction(
                getattr(client, "evalsha", None)):
            raise ConfigError(
                "client_async",
                f"client={client!r} is a redis.asyncio client; Batcher is the sync API and needs a "
                "redis.Redis (an asyncio AsyncBatcher is not available yet)",
            )
        if not hasattr(client, "get_connection_kwargs") or not callable(getattr(client, "evalsha", None)):
            raise ConfigError("client_type", f"client={client!r} is not a redis.Redis client")
        if client.get_connection_kwargs().get("decode_responses"):
            raise ConfigError(
                "client_decode_responses",
                "redis client has decode_responses=True; distbatch stores binary events and "
                "needs decode_responses=False",
            )
        self.client = client
        self.keys = Keys(namespace)
        self.clock = clock or ServerClock()
        self.scripts = Scripts(client)
        self.records = Records(client, self.keys, self.scripts)
        self.max_payload_bytes = max_payload_bytes
        self.chunk_size = chunk_size
        self.dispatcher = Dispatcher(queue_client or client, self.keys) if handoff else None
        self.on_cut: OnCut | None = on_cut or self.dispatcher
        self._registry = _Registry()
        self._local = threading.local()
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(6)
        k = self.keys
        self._acc_tail = [k.deadlines, k.wake, k.batch_seq, k.ready, k.stats, k.bindings]
        self._acc_head = [k.buffer_prefix, k.open_prefix, k.batch_prefix]

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "distbatch",
        clock: ManualClock | ServerClock | None = None,
        queue_url: str | None = None,
        **options: Any,
    ) -> Batcher:
        """`redis://`, `rediss://` (TLS) and `unix://` URLs, with user:password when needed.

        Options the Batcher does not take (`max_connections`, `socket_timeout`, ...) go to the
        redis client.
        """
        own = {k: options.pop(k) for k in list(options)
               if k in {"max_payload_bytes", "chunk_size", "handoff", "on_cut"}}
        client = redis.Redis.from_url(url, **options)
        queue_client = redis.Redis.from_url(queue_url, **options) if queue_url else None
        return cls(client, namespace=namespace, clock=clock, queue_client=queue_client, **own)

    def _emitter(self) -> tuple[redis.Redis, str, Iterator[int]]:
        """This thread's own connection for the emit path, with its call-id key and counter.

        A pool checkout and check-in per emit (lock, pid check, metrics) cost 5-15% of a
        single-event emit on loopback; this keeps only the checkout's readiness check. Keyed by
        pid too, so a forked child never writes to its parent's socket. The call key lets the
        script recognise a retried call (same id) after a lost reply and not store it twice.
        """
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.client = self.client.__class__(
                connection_pool=self.client.connection_pool, single_connection_client=True
            )
            local.pid = os.getpid()
            local.call_key = self.keys.call(f"{self._id_prefix}-{os.getpid()}-{threading.get_ident()}")
            local.calls = itertools.count(1)
        conn = local.client.connection
        try:  # what the pool checks at checkout: a socket the server closed (restart) reconnects
            if conn.can_read():
                raise redis.ConnectionError("connection has unread data")
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
        return local.client, local.call_key, local.calls

    # registry ---------------------------------------------------------------------------

    def register(
        self,
        id: str,
        *,
        version: str,
        source: str,
        batch: Mapping[str, Any],
        handler: str | Callable[..., Any],
        retry: Mapping[str, Any] | RetryPolicy | None = None,
    ) -> str:
        """Store a trigger binding for every instance to see; returns its key `id@version`.

        A callable `handler` is stored by import path and allowed to run in this process.
        """
        if callable(handler):
            register_handler(handler)
        binding = Binding.build(
            id, version=version, source=source, batch=batch, handler=handler, retry=retry
        )
        definition = json.dumps(binding.to_dict(), sort_keys=True, separators=(",", ":"))
        k = self.keys
        stored = self.scripts.register(
            keys=[k.bindings, k.registry_version, k.dropped],
            args=[binding.key, definition, secrets.token_hex(8)],
        )
        if isinstance(stored, bytes):
            raise ConfigError(
                "binding_conflict",
                f"binding={binding.key!r} is already registered with a different config "
                f"({stored.decode()}); register the new behaviour under a new version",
            )
        self._registry = _Registry()
        return binding.key

    def bindings(self) -> dict[str, Binding]:
        """Every registered binding, as Redis has it now."""
        return dict(self._load().bindings)

    def binding(self, key: str) -> Binding | None:
        reg = self._registry
        if key not in reg.bindings:
            reg = self._load()
        return reg.bindings.get(key)

    def _load(self) -> _Registry:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys.registry_version)
        pipe.hgetall(self.keys.bindings)
        epoch, raw = pipe.execute()
        bindings = {
            k.decode(): Binding.from_dict(json.loads(v)) for k, v in sorted(raw.items())
        }
        routes: dict[str, list[_Route]] = {}
        for b in bindings.values():
            routes.setdefault(b.source, []).append(
                _Route(b, b.key, split_path(b.batch.key), b"%d" % b.batch.count, b"%d" % b.batch.window_ms)
            )
        self._registry = reg = _Registry(epoch or b"", routes, bindings, True)
        return reg

    # emitting ---------------------------------------------------------------------------

    def emit(self, source: str, payload: Mapping[str, Any]) -> list[EmitResult]:
        """Add one event to every binding of `source`; one result per binding."""
        return self.emit_many(source, [payload])

    def emit_many(self, source: str, payloads: Iterable[Mapping[str, Any]]) -> list[EmitResult]:
        """Add events in order, one script call (one round trip) per chunk of events.

        Every payload is encoded and checked before anything is written, so a bad one raises
        `PayloadError` and stores nothing. Batches cut by a chunk are handed off right after it;
        a failed hand-off is logged, never raised (a sweeper hands them off). If Redis fails
        part-way, `EmitError` says which events were stored (`.stored`, `.results`) and how many
        may or may not have been (`.uncertain`).
        """
        now = self.clock.now_ms()
        stamp = now if now is not None else int(time.time() * 1000)
        prefix = self._id_prefix
        ids = self._ids
        limit = self.max_payload_bytes
        events = [
            (p, encode_event(f"{prefix}-{next(ids):x}", source, stamp, p, limit))
            for p in payloads
        ]
        if not events:
            return []
        reg = self._registry if self._registry.loaded else self._load()
        if not reg.routes.get(source):
            self._warn_unbound(source)
        window_now = b"" if now is None else b"%d" % now
        results: list[EmitResult] = []
        start = stale = 0
        plan = self._plan(reg, source, events)  # every partition key, before the first write
        while start < len(events):
            if plan.registry is not self._registry:  # bindings changed under us: plan again
                reg = self._registry if self._registry.loaded else self._load()
                plan = self._plan(reg, source, events[start:], offset=start)
            step = max(1, self.chunk_size // max(1, len(plan.routes)))
            chunk = events[start : start + step]
            try:
                results.extend(self._accumulate(source, chunk, plan, start, window_now))
            except _Stale:
                stale += 1
                if stale > 10:
                    raise RuntimeError("bindings kept changing while emitting; gave up") from None
                continue
            except _TRANSIENT as exc:
                raise EmitError(results, start, len(chunk), exc) from exc
            start += len(chunk)
        return results

    def _plan(self, reg: _Registry, source: str, events: Sequence[tuple[Mapping[str, Any], bytes]],
              offset: int = 0) -> _Plan:
        routes = reg.routes.get(source, [])
        placed: list[tuple[str, str | None, bytes]] = []
        for i, (payload, _data) in enumerate(events, offset):
            for r in routes:
                try:
                    pkey = partition_key(payload, r.path)
                except Exception as exc:
                    raise PayloadError(
                        "partition_key",
                        f"event {i}: the partition key at batch.key={r.binding.batch.key!r} of "
                        f"binding={r.key!r} cannot be read: {exc!r}; nothing was stored",
                    ) from exc
                placed.append((r.key, pkey, member_bytes(r.key, pkey)))
        return _Plan(reg, routes, placed, offset)

    def _warn_unbound(self, source: str) -> None:
        warned: set[str] = self.__dict__.setdefault("_warned_sources", set())
        if source not in warned:
            warned.add(source)
            log.warning(
                "source_unbound source=%r namespace=%r: no trigger is bound to this source, events "
                "emitted to it are not stored (a typo, or the wrong namespace?)",
                source, self.keys.namespace, extra={"event": "source_unbound", "source": source},
            )

    def _accumulate(self, source: str, events: Sequence[tuple[Mapping[str, Any], bytes]], plan: _Plan,
                    start: int, window_now: bytes) -> list[EmitResult]:
        client, call_key, calls = self._emitter()
        reg, routes = plan.registry, plan.routes
        if not routes:  # maybe bound since we read the bindings: one GET tells
            if (client.get(self.keys.registry_version) or b"") == reg.epoch:
                return []
            self._registry = _Registry()
            raise _Stale
        n = len(routes)
        first = (start - plan.offset) * n
        placed = plan.placed[first : first + len(events) * n]
        call_id = b"%d" % next(calls)
        args: list[Any] = [reg.epoch, call_id, window_now, BUFFER_CAP, *self._acc_head]
        items = iter(placed)
        for _payload, data in events:
            for r in routes:
                _, _, member = next(items)
                args += (member, r.count, r.window, data)
        keys = [self.keys.registry_version, call_key, *self._acc_tail]
        try:
            reply = self.scripts.accumulate(keys=keys, args=args, client=client)
        except _TRANSIENT:
            # The reply may be lost after Redis ran it: send the same call id again once;
            # the script answers -2 if it ran, so nothing is stored twice.
            if client.connection is not None:
                client.connection.disconnect()  # type: ignore[no-untyped-call]
            reply = self.scripts.accumulate(keys=keys, args=args, client=client)
        if reply[0] == -1:
            self._registry = _Registry()
            raise _Stale
        pairs = [(b, p) for b, p, _ in placed]
        if reply[0] == -2:  # ran before; its reply (which batches it cut) was lost
            self._handoff(())
            return [EmitResult(b, p) for b, p in pairs]
        return self._results(pairs, reply)

    def _handoff(self, batch_ids: Sequence[str]) -> None:
        if self.on_cut is None:
            return
        try:
            self.on_cut(batch_ids)
        except Exception as exc:  # the batches are safe in Redis; a sweeper hands them off
            log.warning("handoff_failed batches=%d: %r; a sweeper will hand them off", len(batch_ids),
                        exc, extra={"event": "handoff_failed"})

    def _results(self, placed: list[tuple[str, str | None]], reply: list[Any]) -> list[EmitResult]:
        """Build one result per item; the reply lists only items that cut, closed or overflowed."""
        cut_ms = reply[0]
        notes: dict[int, dict[str, Any]] = {}
        cuts: list[str] = []
        fields = iter(reply)
        next(fields)
        for item, kind, batch_id, blob in zip(fields, fields, fields, fields, strict=True):
            binding, pkey = placed[item - 1]
            note = notes.setdefault(item - 1, {})
            if kind == b"overflow":
                note["overflowed"] = 1
                log.warning(
                    "buffer_overflow binding=%s partition=%r: buffer at its cap of %d events, "
                    "oldest event dropped",
                    binding, pkey, BUFFER_CAP,
                    extra={"event": "buffer_overflow", "binding": binding, "partition": pkey},
                )
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
        out = [EmitResult(b, p) for b, p in placed]
        for i, note in notes.items():
            out[i] = EmitResult(out[i].binding, out[i].partition_key, **note)
        if cuts:
            self._handoff(cuts)
        return out

    # expiry and drop --------------------------------------------------------------------

    def flush_expired(self, limit: int = 1000) -> list[Batch]:
        """Cut or discard every buffer whose window has run out (what the sweeper does)."""
        batches: list[Batch] = []
        while True:
            rows = self.flush_step(limit, with_events=True).batches
            batches.extend(rows)
            if len(rows) < limit:
                return batches

    def flush_step(self, limit: int, *, with_events: bool) -> FlushStep:
        """One bounded flush; also says when the next window runs out, for the sweeper."""
        k = self.keys
        now = self.clock.now_ms()
        reply = self.scripts.flush_expired(
            keys=[k.deadlines, k.batch_seq, k.ready, k.stats, k.bindings],
            args=[
                "" if now is None else now, limit,
                k.buffer_prefix, k.open_prefix, k.batch_prefix, int(with_events),
            ],
        )
        batches = [decode_cut(row) for row in reply[2:]]
        for b in batches:
            if b.discarded:
                log.info(
                    "batch_discarded binding=%s partition=%r events=%d",
                    b.binding, b.partition_key, len(b.events),
                    extra={"event": "batch_discarded", "binding": b.binding},
                )
        cuts = [b.id for b in batches if not b.discarded]
        if cuts:
            self._handoff(cuts)
        return FlushStep(batches, None if reply[0] == -1 else int(reply[0]), int(reply[1]))

    def drop(self, binding: str) -> list[Event]:
        """Remove a binding and all its buffers; returns the events still pending in them.

        Batches it already cut are not pending: they were handed off and are still delivered
        (the definition stays readable for workers under `{ns}:dropped`).
        """
        k = self.keys
        reply = self.scripts.drop_binding(
            keys=[k.bindings, k.registry_version, k.deadlines, k.stats, k.dropped],
            args=[binding, k.buffer_prefix, k.open_prefix, secrets.token_hex(8)],
        )
        self._registry = _Registry()
        events: list[Event] = []
        for i in range(1, len(reply), 2):
            events.extend(decode_events(reply[i + 1]))
        return events

    def server_ms(self) -> int:
        """The Redis server's clock (what leases and retry times are measured on)."""
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000
