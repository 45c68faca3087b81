"""AsyncBatcher: the same batcher for asyncio apps, on redis.asyncio.

It runs the very procedures `Batcher` runs (`ingest.py`: planning, script arguments, reply
decoding, the re-plan after a registry change), only awaited. Build it with
``await AsyncBatcher.from_url(url)`` (a `BlockingConnectionPool`, so a burst of concurrent emits
waits for a connection instead of failing with `MaxConnectionsError`), or ``AsyncBatcher(client)``
with a `redis.asyncio` client; the first call reads the namespace's layout.

Concurrent emits: `emit` calls in flight together are sent as one `emit_many` per source
(`coalesce.py`; each caller still gets only its own results or error), and each script call in
flight holds an emitter id of its own, taken from a free list, so the call id a resend repeats is
recognised by the script (a lost reply never stores twice).

Hand-off: RQ is sync-only, so a cut's ticket is enqueued on a sync client in a worker thread
(`asyncio.to_thread`); `queue_client` / `queue_url` as for `Batcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import redis
import redis.asyncio

from .clients import AsyncCluster, check_async_client, cluster_nodes, connect, parsing_url, sync_twin
from .clock import ManualClock, ServerClock, checked_clock
from .coalesce import SENDING, Coalescer, Regroup
from .config import Binding, RetryPolicy
from .dispatch import Dispatcher, OnCut, hand_off
from .errors import ConfigError, describe
from .ingest import (
    BATCHER_OPTIONS,
    DEFAULT_MAX_PAYLOAD,
    FlushStep,
    Ingest,
    checked_payloads,
    checked_source,
    positive_int,
)
from .keys import Keys
from .models import Batch, EmitResult, Event
from .ops import Atomic, Call, Cmd, Eval, Handoff, Op, Proc, Store, multi_refused
from .scripts import NAMES, acall, apipelined, source
from .sent import REFUSED_WRITE, NotSent, after_resend, resend_failed
from .shards import Layout
from .transport import TRANSIENT, apatient, slot_moving

log = logging.getLogger("distbatch")
T = TypeVar("T")
DEFAULT_MAX_CONNECTIONS = 64


def connect_async(url: str, **options: Any) -> Any:
    """A redis.asyncio client for `url` on a BlockingConnectionPool (`max_connections`, default
    64; `pool_timeout` seconds to wait for a free connection, default 20); `redis+cluster://` and
    `rediss+cluster://` give a redis.asyncio RedisCluster. Socket timeouts default to 10 s (5 s to
    connect), so an unreachable or stalled Redis fails a call instead of hanging it."""
    options.setdefault("socket_timeout", 10)
    options.setdefault("socket_connect_timeout", 5)
    scheme, sep, _ = url.partition("://")
    if sep and scheme.endswith("+cluster"):
        options.pop("pool_timeout", None)  # a node's pool raises when full: the batcher's calls in
        options.setdefault("max_connections", DEFAULT_MAX_CONNECTIONS)  # flight stay within it
        url, more = cluster_nodes(url)
        if more:
            options["startup_nodes"] = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in more]
        with parsing_url(url):
            return AsyncCluster.from_url(url.replace("+cluster", "", 1), **options)
    with parsing_url(url):
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=options.pop("max_connections", DEFAULT_MAX_CONNECTIONS),
            timeout=options.pop("pool_timeout", 20), **options)
    return redis.asyncio.Redis(connection_pool=pool)


class AsyncBatcher:
    """The asyncio twin of `Batcher`: same arguments, same methods, awaited."""

    def __init__(
        self,
        client: Any,
        *,
        namespace: str = "distbatch",
        clock: ManualClock | ServerClock | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        chunk_size: int = 1000,
        handoff: bool = True,
        queue_client: redis.Redis | None = None,
        on_cut: OnCut | None = None,
        shards: int | None = None,
        coalesce: bool = True,
        fix_layout: bool = True,
    ) -> None:
        self.namespace = Keys(namespace).namespace  # a bad namespace is the first thing to say
        checked_clock(clock)
        self._queue_on_same_redis = False
        check_async_client(client)
        self.client = client
        self.cluster = isinstance(client, redis.asyncio.RedisCluster)
        self._no_multi = False  # a look-only ACL user: what reads as one is read in order
        if handoff and on_cut is None and queue_client is None:
            if self.cluster:
                raise ConfigError(
                    "cluster_needs_queue_url",
                    "RQ cannot run on Redis Cluster (its keys span slots): give the queue a "
                    "standalone Redis (queue_url= / queue_client=), or handoff=False",
                )
            queue_client = sync_twin(client)
            self._queue_on_same_redis = True
        self.dispatcher = Dispatcher(queue_client, Keys(namespace)) if handoff and queue_client else None
        self.on_cut: OnCut | None = on_cut or self.dispatcher
        self._options = {"clock": clock,
                         "max_payload_bytes": positive_int("max_payload_bytes", max_payload_bytes),
                         "chunk_size": positive_int("chunk_size", chunk_size)}
        self._shards, self._fix_layout = shards, fix_layout
        self._scripts = {name: client.register_script(source(name)) for name in NAMES}
        self._core: Ingest | None = None
        self._starting: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emitters: list[tuple[str, Iterator[int]]] = []
        self._calls_in_flight: asyncio.Semaphore | None = None
        self._pool_timeout: float | None = None
        self._emitter_ids = itertools.count()
        self._coalescer = Coalescer(self._emit_many) if coalesce else None

    @classmethod
    async def from_url(
        cls,
        url: str,
        *,
        namespace: str = "distbatch",
        clock: ManualClock | ServerClock | None = None,
        queue_url: str | None = None,
        **options: Any,
    ) -> AsyncBatcher:
        """Connect and read the namespace's layout. URLs and options as `Batcher.from_url`."""
        own = {k: options.pop(k) for k in list(options) if k in BATCHER_OPTIONS | {"coalesce"}}
        client = connect_async(url, **options)
        options.pop("max_connections", None)
        options.pop("pool_timeout", None)
        queue_client = connect(queue_url, "queue_url", **options) if queue_url else None
        batcher = cls(client, namespace=namespace, clock=clock, queue_client=queue_client, **own)
        try:
            await batcher.start()
        except BaseException:
            await batcher.aclose()
            raise
        return batcher

    def _own_loop(self) -> None:
        """An AsyncBatcher (its redis.asyncio client, its coalescer) lives on the loop it was
        first used on; another loop gets a clear error before anything is sent."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise ConfigError(
                "aio_other_loop",
                "this AsyncBatcher was first used on another event loop (a second asyncio.run, or "
                "another thread?); it and its redis.asyncio client belong to one loop: create one "
                "AsyncBatcher per event loop. Nothing was sent",
            )

    async def start(self) -> Ingest:
        """Read (or fix) the namespace's layout; done by the first call if not before."""
        self._own_loop()
        if self._core is not None:
            return self._core
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._core is None:
                if self.cluster:
                    await self.client.initialize()
                    masters = max(1, len(self.client.get_primaries()))
                else:
                    masters = 1
                layout = await self._drive(Layout.read(self.namespace, self._shards, lambda: masters,
                                                          self._fix_layout))
                pool = getattr(self.client, "connection_pool", None)
                if self.cluster:  # a node's pool raises MaxConnectionsError once full, and a call
                    # may take a connection on one node for each of its shards
                    per_node = self.client.connection_kwargs.get("max_connections") or DEFAULT_MAX_CONNECTIONS
                    in_flight = max(1, per_node // layout.count)
                else:
                    in_flight = getattr(pool, "max_connections", None) or DEFAULT_MAX_CONNECTIONS
                self._calls_in_flight = asyncio.Semaphore(in_flight)
                self._pool_timeout = getattr(pool, "timeout", None) if not self.cluster else None
                core = Ingest(layout, cluster=self.cluster, **self._options)  # type: ignore[arg-type]
                dispatcher = self.dispatcher
                if self._queue_on_same_redis and dispatcher is not None and self.on_cut is dispatcher:
                    core.queue_key = dispatcher.queue.key  # the script reads its length
                self._core = core
        return self._core

    @property
    def core(self) -> Ingest:
        if self._core is None:
            raise RuntimeError("AsyncBatcher not started: await batcher.start() (or any call) first")
        return self._core

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.dispatcher.client.close()

    async def __aenter__(self) -> AsyncBatcher:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # the API: Batcher's, awaited ----------------------------------------------------------

    async def register(self, id: str, *, version: str, source: str, batch: Mapping[str, Any],
                       handler: str | Callable[..., Any],
                       retry: Mapping[str, Any] | RetryPolicy | None = None) -> str:
        """Store a trigger binding for every instance to see; returns its key `id@version`."""
        core = await self.start()
        return await self._drive(core.register(id, version=version, source=source, batch=batch,
                                               handler=handler, retry=retry))

    async def bindings(self) -> dict[str, Binding]:
        return await self._drive((await self.start()).bindings())

    async def binding(self, key: str) -> Binding | None:
        return await self._drive((await self.start()).binding(key))

    async def emit(self, source: str, payload: Mapping[str, Any]) -> list[EmitResult]:
        """Add one event to every binding of `source`; one result per binding.

        Emits in flight at the same time share script calls (`coalesce=True`, the default):
        each caller still gets exactly its own results or its own error (`coalesce.py`)."""
        self._own_loop()
        if self._coalescer is not None:
            checked_source(source)  # the coalescer groups calls by source: a hashable one
            return await self._coalescer.emit(source, [payload])
        return await self._drive((await self.start()).emit_one(source, payload))

    async def _emit_many(self, source: str, payloads: list[Mapping[str, Any]]) -> list[EmitResult]:
        return await self._drive((await self.start()).emit_many(source, payloads))

    async def emit_many(self, source: str, payloads: Iterable[Mapping[str, Any]]) -> list[EmitResult]:
        """As `Batcher.emit_many`: checked before anything is written, `EmitError` on a failure
        part-way. Concurrent calls share script calls, as `emit`'s do."""
        self._own_loop()
        checked_source(source)
        checked_payloads(payloads)  # before `list()` makes one dict its keys
        batch = payloads if isinstance(payloads, list) else list(payloads)
        if self._coalescer is not None:
            return await self._coalescer.emit(source, batch)
        return await self._emit_many(source, batch)

    async def flush_expired(self, limit: int = 1000) -> list[Batch]:
        return await self._drive((await self.start()).flush_expired(limit))

    async def flush_step(self, limit: int, *, with_events: bool, shard: int = 0) -> FlushStep:
        return await self._drive((await self.start()).flush_step(limit, with_events=with_events, shard=shard))

    async def drop(self, binding: str) -> list[Event]:
        return await self._drive((await self.start()).drop(binding))

    async def counters(self) -> dict[str, int]:
        return await self._drive((await self.start()).counters())

    async def open_buffers(self) -> int:
        return await self._drive((await self.start()).open_buffers())

    async def server_ms(self) -> int:
        self._own_loop()  # on another loop the client is not this loop's
        return await self._drive(Ingest.server_ms())

    async def run(self, proc: Proc[T]) -> T:
        """Await one of `core`'s procedures on this batcher's client."""
        await self.start()
        return await self._drive(proc)

    # the driver ---------------------------------------------------------------------------

    async def _drive(self, proc: Proc[T]) -> T:
        """Run a procedure to its end; a failed operation is raised inside it, where it was asked."""
        send, throw = proc.send, proc.throw
        try:
            op = next(proc)
            while True:
                try:
                    reply = await self._do(op)
                except Exception as exc:
                    op = throw(exc)
                else:
                    op = send(reply)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _do(self, op: Op) -> Any:
        if isinstance(op, Store):
            return await self._store(op)
        if self._calls_in_flight is not None and isinstance(op, Eval | Cmd | Atomic):
            async with self._connection():
                return await self._read(op)
        return await self._read(op)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[None]:
        await self._take_connection()
        try:
            yield
        finally:
            self._give_connection()

    async def _take_connection(self) -> None:
        """A connection of the pool for one call: every call of this batcher takes its turn here,
        so none past this point waits inside redis-py's pool. A coalesced group's gate (`SENDING`)
        is asked past it: a group waiting there for a connection that reads held (a registry
        reload, `counters`) had passed the gate, and a caller cancelled meanwhile was stored. A
        cluster node's pool raises once full instead of waiting. Waits at most the pool's own
        `pool_timeout`: past it nothing was sent (reported as such: it was "uncertain")."""
        sem = self._calls_in_flight
        assert sem is not None
        if not sem.locked():  # a slot free: taken at once, with no wait to bound (a timer per call
            await sem.acquire()  # cost async emits 10-15%)
            return
        try:  # not `wait_for`: on Python 3.11 it returned a slot that came free as the caller was
            async with asyncio.timeout(self._pool_timeout):  # cancelled, and dropped the cancellation
                await sem.acquire()
        except TimeoutError as exc:
            raise NotSent(f"no connection of the pool came free within pool_timeout="
                          f"{self._pool_timeout}s: nothing was sent") from exc

    def _give_connection(self) -> None:
        assert self._calls_in_flight is not None
        self._calls_in_flight.release()

    async def _read(self, op: Op) -> Any:
        if isinstance(op, Eval):
            return await self._eval(op.script, list(op.keys), list(op.args))
        if isinstance(op, Cmd):  # on a cluster a multi-key one (EXISTS a b) can meet a slot on the move
            return await apatient(lambda: getattr(self.client, op.name)(*op.args), self.client)
        if isinstance(op, Atomic):
            return await self._atomic(op.cmds)
        assert isinstance(op, Handoff)
        await self._handoff(op.batch_ids, op.queued)
        return None

    async def _eval(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        script = self._scripts[name]
        try:
            return await apatient(lambda: acall(script, keys, args), self.client)
        except TRANSIENT as first:  # every script is idempotent per call id or token: safe to resend
            if slot_moving(first.__cause__ or first):  # a slot on the move, waited for already
                raise
            try:
                return await apatient(lambda: acall(script, keys, args), self.client)
            except REFUSED_WRITE as second:
                raise after_resend(second) from second
            except TRANSIENT as second:
                err = resend_failed(first, second)
                if err is second:
                    raise  # as it is: `from second` would make it its own cause
                raise err from second

    async def _atomic(self, cmds: tuple[Cmd, ...]) -> list[Any]:
        if not self.cluster and not self._no_multi:
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    for c in cmds:
                        getattr(pipe, c.name)(*c.args)
                    return list(await pipe.execute())
            except redis.RedisError as exc:
                why = multi_refused(exc)  # as the sync driver: read in order instead
                if why is None:
                    raise
                self._no_multi = why == "acl"
        return [await getattr(self.client, c.name)(*c.args) for c in cmds]

    async def _store(self, op: Store) -> list[Any]:
        try:
            await self._take_connection()  # emitter ids (and their call-id keys) <= connections
        except NotSent as exc:  # no connection came free: each call's reply is that it was not sent
            return [exc] * len(op.build(*self._new_emitter()))
        try:
            still = SENDING.get()
            if still is not None and not still():
                raise Regroup  # a coalesced caller was cancelled while the group waited: none sent
            return await self._store_as(self._emitters.pop() if self._emitters else self._new_emitter(), op)
        finally:
            self._give_connection()

    async def _store_as(self, emitter: tuple[str, Iterator[int]], op: Store) -> list[Any]:
        try:
            calls = op.build(*emitter)
            if len(calls) == 1 or self.cluster:
                return list(await asyncio.gather(*(self._one(op.script, c) for c in calls)))
            try:
                return await self._pipeline(op.script, calls)
            except TRANSIENT as first:
                try:
                    return [after_resend(r) for r in await self._pipeline(op.script, calls)]
                except TRANSIENT as exc:
                    return [resend_failed(first, exc)] * len(calls)
        finally:
            self._emitters.append(emitter)

    def _new_emitter(self) -> tuple[str, Iterator[int]]:
        return f"{os.urandom(4).hex()}-{os.getpid()}-a{next(self._emitter_ids)}", itertools.count(1)

    async def _one(self, script: str, call: Call) -> Any:
        try:
            return await self._eval(script, *call)
        except (*TRANSIENT, redis.ResponseError) as exc:  # as Transport: the caller says what may be stored
            return exc

    async def _pipeline(self, name: str, calls: Sequence[Call]) -> list[Any]:
        script = self._scripts[name]
        return await apipelined(self.client, [(script, keys, args) for keys, args in calls])

    async def _handoff(self, batch_ids: Sequence[str], queued: int = -1) -> None:
        hook = self.on_cut
        if hook is None:
            return
        if hook is self.dispatcher and not self.dispatcher.wanted(max(1, len(batch_ids)), queued):
            return  # the script saw enough tickets waiting: no thread, no round trip
        if hook is self.dispatcher:  # RQ is sync: its round trips go to a worker thread
            await asyncio.to_thread(hand_off, hook, batch_ids, queued)
            return
        try:  # whatever it returns to await is awaited: an `async def`, an object with an async
            ran = hook(batch_ids)  # __call__, a lambda or partial of one (only the first was)
            if inspect.isawaitable(ran):
                await ran
        except Exception as exc:
            log.warning("handoff_failed batches=%d: %s; a sweeper will hand them off",
                        len(batch_ids), describe(exc), extra={"event": "handoff_failed"})
