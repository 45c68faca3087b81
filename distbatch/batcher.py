"""Batcher: register triggers, emit events, cut and flush batches (ingest; all state in Redis).

The logic lives in `ingest.py` as sans-I/O procedures shared with `AsyncBatcher`; this class runs
them on a sync client (`syncio.py`). What happens to a batch after its cut lives in `records.py`
(claim, lease, complete, fail) and `dispatch.py` (hand-off to the workers); which shard a buffer
lives on in `shards.py`; how calls reach the shards in `transport.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import NoScriptError

from . import codec
from .clients import check_client, connect, is_cluster
from .clock import ManualClock, ServerClock
from .config import Binding, RetryPolicy
from .dispatch import Dispatcher, OnCut, hand_off
from .errors import ConfigError
from .ingest import BATCHER_OPTIONS, DEFAULT_MAX_PAYLOAD, FlushStep, Ingest, checked_source, positive_int
from .keys import Keys
from .models import Batch, EmitResult, Event
from .onecall import pack
from .ops import Proc
from .records import Records
from .scripts import Scripts
from .shards import Layout, default_shards
from .syncio import SyncDriver
from .transport import Transport

log = logging.getLogger("distbatch")
T = TypeVar("T")
__all__ = ["Batcher", "FlushStep", "OnCut"]


class Batcher:
    """Front door of distbatch. Safe to share between threads; many instances share one Redis
    (or one Redis Cluster: `Batcher.from_url("redis+cluster://host:7000/")`).

    By default every batch it cuts is handed to the workers at once (`handoff=True`): a ticket is
    enqueued on the namespace's RQ queue (on `queue_client`, default the same Redis; on a cluster
    pass `queue_url`/`queue_client`: RQ cannot live on a cluster). Pass `handoff=False` for a
    batcher that only ingests (a sweeper then hands its batches off), or `on_cut=` for a hook of
    your own. `shards` splits the namespace (default 1 on one Redis, the number of masters on a
    cluster); it is fixed when the namespace is first used, and stored then, so an instance that
    asks for another number later gets `shards_mismatch` instead of a namespace split in two.
    `fix_layout=False` stores nothing: for a look that must not write (`distbatch stats`).
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
        shards: int | None = None,
        fix_layout: bool = True,
    ) -> None:
        Keys(namespace)  # a bad namespace is the first thing to say
        check_client(client)
        self.client = client
        self.cluster = is_cluster(client)
        if handoff and on_cut is None and queue_client is None and self.cluster:
            raise ConfigError(
                "cluster_needs_queue_url",
                "RQ cannot run on Redis Cluster (its keys span slots): give the queue a standalone "
                "Redis (queue_url= / queue_client=, --queue-url), or handoff=False",
            )
        self.scripts = Scripts(client)
        self.transport = Transport(client)
        self.driver = SyncDriver(client, self.scripts, self.transport, self._handoff)
        self.layout = self.driver.run(
            Layout.read(Keys(namespace).namespace, shards, lambda: default_shards(client), fix_layout))
        self.core = Ingest(self.layout, cluster=self.cluster, clock=clock,
                           max_payload_bytes=max_payload_bytes, chunk_size=chunk_size)
        self.shards = self.core.shards
        self.keys = self.core.keys
        self.clock = self.core.clock
        self.registry = self.core.registry
        self.records = Records(client, self.layout, self.scripts)
        self.dispatcher = Dispatcher(queue_client or client, self.keys) if handoff else None
        self.on_cut: OnCut | None = on_cut or self.dispatcher
        if self.on_cut is self.dispatcher is not None and queue_client is None and not self.cluster:
            self.core.queue_key = self.dispatcher.queue.key  # same Redis: the script reads its length
        self._run = self.driver.run

    @property
    def chunk_size(self) -> int:
        """Events (times bindings) per script call of `emit_many`."""
        return self.core.chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int) -> None:
        self.core.chunk_size = positive_int("chunk_size", value)

    @property
    def max_payload_bytes(self) -> int:
        return self.core.max_payload_bytes

    def close(self) -> None:
        """Let go of the connections, and of the probe a queue that was away left running."""
        if self.dispatcher is not None:
            self.dispatcher.close()
            if self.dispatcher.client is not self.client:
                self.dispatcher.client.close()
        self.client.close()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run(self, proc: Proc[T]) -> T:
        """Run one of `core`'s procedures on this batcher's client."""
        return self._run(proc)

    def _handoff(self, batch_ids: Sequence[str], queued: int = -1) -> None:
        hand_off(self.on_cut, batch_ids, queued)

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
        """`redis://`, `rediss://` (TLS), `unix://`, and `redis+cluster://` / `rediss+cluster://`
        (any node of a Redis Cluster), with user:password when needed.

        Options the Batcher does not take (`max_connections`, `socket_timeout`, ...) go to the
        redis client.
        """
        own = {k: options.pop(k) for k in list(options) if k in BATCHER_OPTIONS}
        client = connect(url, **options)
        queue_client = connect(queue_url, "queue_url", **options) if queue_url else None
        return cls(client, namespace=namespace, clock=clock, queue_client=queue_client, **own)

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
        return self._run(self.core.register(id, version=version, source=source, batch=batch,
                                            handler=handler, retry=retry))

    def bindings(self) -> dict[str, Binding]:
        """Every registered binding, as Redis has it now."""
        return self._run(self.core.bindings())

    def binding(self, key: str) -> Binding | None:
        return self._run(self.core.binding(key))

    # emitting ---------------------------------------------------------------------------

    def emit(self, source: str, payload: Mapping[str, Any]) -> list[EmitResult]:
        """Add one event to every binding of `source`; one result per binding.

        The common case (one binding, one shard, one Redis, a plain dict payload whose partition
        key this thread has seen) is one packed call (`onecall.Single`) and its result when the
        reply says only "stored"; anything else (a cut, a stale registry, a failure) goes on in
        `Ingest.one_done`, and other emits take `Ingest.emit_one`'s planned path."""
        em = self.transport.emitter()
        core = self.core
        try:
            entry = em.singles.get(source)
        except TypeError:  # unhashable: no source
            checked_source(source)
            raise
        if entry is None or entry[0] is not core.registry.cached:
            checked_source(source)
            reg = core.registry.cached
            entry = (reg, None if self.cluster else core.single(source, em.id))
            if len(em.singles) >= 64:  # sources come and go: stay bounded
                em.singles.clear()
            em.singles[source] = entry
        single = entry[1]
        if single is None or type(payload) is not dict:
            return self._run(core.emit_one(source, payload))
        if single.keyed:
            pkey = payload.get(single.field)
            known = single.known.get(pkey) if type(pkey) is str else None
        else:
            pkey, known = None, single.known.get(None)
        if known is None and not single.learnable(pkey):
            return self._run(core.emit_one(source, payload))
        _, prefix, ids = core.event_ids_of(em.pid)
        now = core.clock.now_ms()
        event = codec.encode_plain(f"{prefix}-{next(ids):x}", source,
                                   time.time_ns() // 1_000_000 if now is None else now, payload)
        if event is None or len(event) > core.max_payload_bytes:
            return self._run(core.emit_one(source, payload))  # it names what is wrong
        if known is None:  # learnt only for a payload that will be sent
            known = single.learn(pkey)
        at = time.monotonic()
        keep_ttl = at < em.ttl_due
        window_now = b"" if now is None else b"%d" % now
        call_id = next(em.calls)
        script = self.scripts.accumulate_one
        try:
            reply = self.transport.run_one(script, pack(single.head, known[0], window_now, call_id, event,
                                                        keep_ttl), em.client)
        except NoScriptError:  # Redis lacks the script (a restart, SCRIPT FLUSH): it ran nothing
            call = single.lists(known, window_now, call_id, event, keep_ttl)
            reply = self.transport.run(script, [call], em.client)[0]  # sent again as EVAL
        if type(reply) is list:
            if not keep_ttl and reply[0] != -1:  # it ran: the call key's TTL is set
                em.ttl_set(at)
            if len(reply) == single.quick_len and reply[0] >= 0:  # stored, nothing more to say
                return [known[1]]
        return self._run(core.single_done(single, source, payload, event, known, window_now, reply))

    def emit_many(self, source: str, payloads: Iterable[Mapping[str, Any]]) -> list[EmitResult]:
        """Add events in order, one script call per shard (one round trip per node) per chunk.

        Every payload is encoded and checked, and every partition key read, before anything is
        written, so a bad one raises `PayloadError` and stores nothing. Batches cut by a chunk are
        handed off right after it; a failed hand-off is logged, never raised (a sweeper hands
        them off). If Redis fails part-way, `EmitError` says which events were stored, which may
        or may not have been, and which were not sent.
        """
        return self._run(self.core.emit_many(source, payloads))

    # expiry and drop --------------------------------------------------------------------

    def flush_expired(self, limit: int = 1000) -> list[Batch]:
        """Cut or discard every buffer whose window has run out (what the sweeper does)."""
        return self._run(self.core.flush_expired(limit))

    def flush_step(self, limit: int, *, with_events: bool, shard: int = 0) -> FlushStep:
        """One bounded flush of one shard; also says when its next window runs out."""
        return self._run(self.core.flush_step(limit, with_events=with_events, shard=shard))

    def drop(self, binding: str) -> list[Event]:
        """Remove a binding and all its buffers; returns the events still pending in them.

        Batches it already cut are not pending: they were handed off and are still delivered
        (the definition stays readable for workers under `{ns}:dropped`).
        """
        return self._run(self.core.drop(binding))

    def counters(self) -> dict[str, int]:
        """Every counter (`events_in:<binding>`, `batches_dead`, ...) summed over the shards."""
        return self._run(self.core.counters())

    def open_buffers(self) -> int:
        """How many buffers are open now, over all shards."""
        return self._run(self.core.open_buffers())

    def server_ms(self) -> int:
        """The Redis server's clock (what leases and retry times are measured on)."""
        return self._run(self.core.server_ms())
