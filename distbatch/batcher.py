"""Batcher: register triggers, emit events, cut and flush batches — all state in Redis."""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from .clock import ManualClock, ServerClock
from .codec import LazyEvents, decode_batch, decode_cut, decode_events, encode_event
from .config import BUFFER_CAP, Binding, RetryPolicy
from .errors import BatchNotFound, ConfigError
from .handlers import handler as register_handler
from .keys import Keys, member_bytes, split_member
from .models import Batch, EmitResult, Event
from .partition import partition_key, split_path
from .scripts import Scripts

log = logging.getLogger("distbatch")

DEFAULT_MAX_PAYLOAD = 1 << 20
OnCut = Callable[[list[str], int | None], None]
"""Called with the ids of batches just cut and the server time (ms) of the cut, None if unknown."""


@dataclass(frozen=True, slots=True)
class _Route:
    binding: Binding
    key: str
    path: tuple[str, ...] | None
    count: bytes
    window: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of `Batcher.claim`: `batch` is set only when this caller may run it."""

    status: str  # "claimed", "gone", "busy", "dead"
    batch: Batch | None = None


@dataclass(frozen=True, slots=True)
class FlushStep:
    batches: list[Batch]
    next_deadline_ms: int | None
    """Earliest open window deadline, on the window clock."""
    server_now_ms: int


class Batcher:
    """Front door of distbatch. Safe to share between threads; many instances share one Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = "distbatch",
        clock: ManualClock | ServerClock | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        chunk_size: int = 1000,
        handoff_grace_ms: int = 2000,
        on_cut: OnCut | None = None,
    ) -> None:
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
        self.max_payload_bytes = max_payload_bytes
        self.chunk_size = chunk_size
        self.handoff_grace_ms = handoff_grace_ms
        self.on_cut = on_cut
        self._regver = b""
        self._routes: dict[str, list[_Route]] = {}
        self._bindings: dict[str, Binding] = {}
        self._loaded = False
        self._lock = threading.Lock()
        self._local = threading.local()
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(6)
        k = self.keys
        self._acc_keys = [k.registry_version, k.deadlines, k.wake, k.batch_seq, k.ready, k.stats]
        self._acc_head = [k.buffer_prefix, k.open_prefix, k.batch_prefix]

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "distbatch",
        clock: ManualClock | ServerClock | None = None,
        **options: Any,
    ) -> Batcher:
        """`redis://`, `rediss://` (TLS) and `unix://` URLs, with user:password when needed."""
        return cls(redis.Redis.from_url(url), namespace=namespace, clock=clock, **options)

    def _emit_client(self) -> redis.Redis:
        """This thread's own connection for the emit path.

        A pool checkout and check-in per emit (lock, pid check, metrics) cost 5-15% of a
        single-event emit on loopback; this keeps only the checkout's readiness check. Keyed by
        pid too, so a forked child never writes to its parent's socket.
        """
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.client = self.client.__class__(
                connection_pool=self.client.connection_pool, single_connection_client=True
            )
            local.pid = os.getpid()
        conn = local.client.connection
        try:  # what the pool checks at checkout: a socket the server closed (restart) reconnects
            if conn.can_read():
                raise redis.ConnectionError("connection has unread data")
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
        return local.client  # type: ignore[no-any-return]

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
            keys=[k.bindings, k.registry_version], args=[binding.key, definition]
        )
        if isinstance(stored, bytes):
            raise ConfigError(
                "binding_conflict",
                f"binding={binding.key!r} is already registered with a different config "
                f"({stored.decode()}); register the new behaviour under a new version",
            )
        self._loaded = False
        return binding.key

    def bindings(self) -> dict[str, Binding]:
        """Every registered binding, as Redis has it now."""
        self._load()
        return dict(self._bindings)

    def binding(self, key: str) -> Binding | None:
        if key not in self._bindings:
            self._load()
        return self._bindings.get(key)

    def _load(self) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys.registry_version)
        pipe.hgetall(self.keys.bindings)
        version, raw = pipe.execute()
        bindings = {
            k.decode(): Binding.from_dict(json.loads(v)) for k, v in sorted(raw.items())
        }
        routes: dict[str, list[_Route]] = {}
        for b in bindings.values():
            routes.setdefault(b.source, []).append(
                _Route(b, b.key, split_path(b.batch.key), b"%d" % b.batch.count, b"%d" % b.batch.window_ms)
            )
        with self._lock:
            self._bindings, self._routes = bindings, routes
            self._regver = version or b"0"
            self._loaded = True

    # emitting ---------------------------------------------------------------------------

    def emit(self, source: str, payload: Mapping[str, Any]) -> list[EmitResult]:
        """Add one event to every binding of `source`; one result per binding."""
        return self.emit_many(source, [payload])

    def emit_many(self, source: str, payloads: Iterable[Mapping[str, Any]]) -> list[EmitResult]:
        """Add events in order, one script call (one round trip) per chunk of events.

        Every payload is encoded and checked before anything is written, so a bad one raises
        `PayloadError` and stores nothing.
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
        window_now = b"" if now is None else b"%d" % now
        results: list[EmitResult] = []
        cuts: list[Batch] = []
        step = max(1, self.chunk_size // max(1, len(self._routes.get(source, ())) or 1))
        for start in range(0, len(events), step):
            results.extend(self._accumulate(source, events[start : start + step], window_now, cuts))
        if cuts and self.on_cut is not None:
            self.on_cut([b.id for b in cuts], cuts[-1].cut_at_ms)
        return results

    def _accumulate(
        self,
        source: str,
        events: Sequence[tuple[Mapping[str, Any], bytes]],
        window_now: bytes,
        cuts: list[Batch],
    ) -> list[EmitResult]:
        for _ in range(10):
            if not self._loaded:
                self._load()
            routes = self._routes.get(source, [])
            placed: list[tuple[str, str | None]] = []
            args: list[Any] = [
                self._regver, window_now, self.handoff_grace_ms, BUFFER_CAP, *self._acc_head
            ]
            for payload, data in events:
                for r in routes:
                    pkey = partition_key(payload, r.path)
                    placed.append((r.key, pkey))
                    args += (member_bytes(r.key, pkey), r.count, r.window, data)
            reply = self.scripts.accumulate(keys=self._acc_keys, args=args, client=self._emit_client())
            if reply[0] == -1:
                self._loaded = False
                continue
            return self._results(placed, reply, cuts)
        raise RuntimeError("bindings kept changing while emitting; giving up after 10 tries")

    def _results(
        self, placed: list[tuple[str, str | None]], reply: list[Any], cuts: list[Batch]
    ) -> list[EmitResult]:
        out: list[EmitResult] = []
        cut_ms = reply[0]
        fields = iter(reply)
        next(fields)
        for (binding, pkey), overflowed, batch_id, blob in zip(
            placed, fields, fields, fields, strict=True
        ):
            if not (batch_id or overflowed):
                out.append(EmitResult(binding, pkey))
                continue
            batch = None
            if batch_id:
                bid = batch_id.decode()
                batch = Batch(bid, binding, pkey, "count", LazyEvents(blob), cut_at_ms=cut_ms)
                cuts.append(batch)
            if overflowed:
                log.warning(
                    "buffer_overflow binding=%s partition=%r: buffer at its cap of %d events, "
                    "oldest event dropped",
                    binding, pkey, BUFFER_CAP,
                    extra={"event": "buffer_overflow", "binding": binding, "partition": pkey},
                )
            out.append(EmitResult(binding, pkey, batch, overflowed))
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
                "" if now is None else now, limit, self.handoff_grace_ms,
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
        if cuts and self.on_cut is not None:
            self.on_cut(cuts, int(reply[1]))
        return FlushStep(batches, None if reply[0] == -1 else int(reply[0]), int(reply[1]))

    def drop(self, binding: str) -> list[Event]:
        """Remove a binding and all its buffers; returns the events still pending in them."""
        k = self.keys
        reply = self.scripts.drop_binding(
            keys=[k.bindings, k.registry_version, k.deadlines, k.stats],
            args=[binding, k.buffer_prefix, k.open_prefix],
        )
        self._loaded = False
        events: list[Event] = []
        for i in range(1, len(reply), 2):
            events.extend(decode_events(reply[i + 1]))
        return events

    # batch records: what the execution layer builds on ----------------------------------

    def claim(self, batch_id: str, lease_ms: int) -> Claim:
        """Take a ready batch to run it, holding a lease; counts the attempt."""
        k = self.keys
        reply = self.scripts.claim(
            keys=[k.ready, k.running, k.dead], args=[batch_id, k.batch_prefix, lease_ms]
        )
        status = ("gone", "busy", "dead", "claimed")[reply[0]]
        if status != "claimed":
            return Claim(status)
        _, member, reason, cut_ms, attempt, blob = reply
        binding, pkey = split_member(member.decode())
        return Claim(
            status,
            Batch(batch_id, binding, pkey, reason.decode(), decode_events(blob),
                  attempt=int(attempt), cut_at_ms=int(cut_ms)),
        )

    def renew(self, batch_id: str, lease_ms: int) -> bool:
        """Extend a running batch's lease (the worker's heartbeat)."""
        deadline = self.server_ms() + lease_ms
        return bool(self.client.zadd(self.keys.running, {batch_id: deadline}, xx=True, ch=True))

    def complete(self, batch_id: str) -> int:
        """The handler succeeded: delete the record. Returns events delivered (0 if gone)."""
        k = self.keys
        return int(self.scripts.complete(
            keys=[k.ready, k.running, k.dead, k.stats], args=[batch_id, k.batch_prefix]
        ))

    def fail(
        self, batch_id: str, error: str, retry_in_ms: int | None, *, only_if_expired: bool = False
    ) -> str:
        """Record a failed try: retry after `retry_in_ms`, or dead when it is None."""
        k = self.keys
        res = self.scripts.fail(
            keys=[k.ready, k.running, k.dead, k.stats],
            args=[batch_id, k.batch_prefix, error[:4000],
                  -1 if retry_in_ms is None else retry_in_ms, int(only_if_expired)],
        )
        return ("unchanged", "retry", "dead")[res]

    def replay(self, batch_id: str) -> bool:
        """Make a dead batch ready again with fresh attempts."""
        k = self.keys
        ok = bool(self.scripts.replay(keys=[k.ready, k.dead], args=[batch_id, k.batch_prefix]))
        if ok and self.on_cut is not None:
            self.on_cut([batch_id], None)
        return ok

    def get_batch(self, batch_id: str) -> Batch:
        record = self.client.hgetall(self.keys.batch(batch_id))
        if not record:
            raise BatchNotFound(batch_id)
        return decode_batch(batch_id, record)

    def batch_error(self, batch_id: str) -> str | None:
        err = self.client.hget(self.keys.batch(batch_id), "error")
        return err.decode() if err else None

    def due_batches(self, limit: int = 1000) -> list[str]:
        """Ready batch ids whose hand-off is due by the server clock (new, retried, orphaned)."""
        ids = self.client.zrangebyscore(self.keys.ready, "-inf", self.server_ms(), start=0, num=limit)
        return [i.decode() for i in ids]

    def server_ms(self) -> int:
        """The Redis server's clock (what leases and hand-off times are measured on)."""
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def mark_handed_off(
        self,
        batch_ids: Sequence[str],
        redeliver_after_ms: int,
        server_ms: int,
        pipeline: redis.client.Pipeline | None = None,
    ) -> None:
        """After enqueueing: hand it off again only if nobody claimed it by then.

        `server_ms` is a server time already known (the cut's or the sweep's), so this can ride
        in the enqueue's pipeline instead of costing round trips of its own.
        """
        if not batch_ids:
            return
        due = server_ms + redeliver_after_ms
        (pipeline or self.client).zadd(self.keys.ready, dict.fromkeys(batch_ids, due), xx=True)
