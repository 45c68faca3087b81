"""The sweeper: cut expired windows on time, promote retries whose backoff ended, reclaim the
batches of workers whose lease ran out, and make sure a ticket waits while batches are ready.

It sleeps until the earliest thing it has to do (a window deadline, a retry coming due, a lease
running out) and listens on the wake channels meanwhile, so a new earlier deadline published by
accumulate wakes it at once. Any number of sweepers can run: they share the namespace's shards
out with short leases (each takes about shards / sweepers), so adding sweepers adds sweep
capacity and a dead sweeper's shards are taken over within a lease. Every step is atomic in Redis
and costs O(log N + work due), never a scan of a backlog.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from . import metrics
from .batcher import Batcher
from .dispatch import Dispatcher, QueueAway
from .errors import describe
from .ingest import FlushStep
from .records import Outcome
from .scripts import call
from .stats import LATENESS_KEPT
from .transport import TRANSIENT, refused_by_acl

log = logging.getLogger("distbatch.sweeper")


SHARD_BACKOFF_MAX_S = 5.0
WAKE_RETRY_S = 5.0
"""How often a sweeper whose wake channel failed twice in a row subscribes afresh (a node that
hangs holds each attempt for a socket timeout); it sweeps every `max_sleep` meanwhile."""
MAX_LEASE_MS = 60_000
"""The longest shard lease a sweeper is expected to set (`lease_s`, 3 s from the CLI): a lease key
living longer, or with no TTL, is no live sweeper's and is taken over (`shard_lease.lua`)."""


@dataclass(slots=True)
class _ShardState:
    head: bytes | None = None
    head_since: float = 0.0
    failed_for: float = 0.0  # how long this shard's last failure keeps it waiting (0: none)
    retry_at: float = 0.0  # `time.monotonic()` before which a failed shard is not tried again

    def failed(self) -> float:
        self.failed_for = min(SHARD_BACKOFF_MAX_S, max(0.1, self.failed_for * 2))
        self.retry_at = time.monotonic() + self.failed_for
        return self.failed_for


class Sweeper:
    def __init__(
        self,
        batcher: Batcher,
        dispatcher: Dispatcher | None = None,
        *,
        limit: int = 500,
        max_sleep_s: float = 1.0,
        nudge_s: float = 1.0,
        summary_every_s: float = 60.0,
        lease_s: float = 3.0,
        backup_ms: int = 10,
    ) -> None:
        self.batcher = batcher
        self.records = batcher.records
        self.dispatcher = dispatcher or batcher.dispatcher or Dispatcher(batcher.client, batcher.keys)
        self.limit = limit
        self.max_sleep_s = max_sleep_s
        self.nudge_s = nudge_s
        self.summary_every_s = summary_every_s
        self.lease_ms = int(lease_s * 1000)
        self.backup_ms = backup_ms
        self.id = secrets.token_hex(6)
        self.owned: list[int] = []
        self.cut = 0
        self.discarded = 0
        self.reclaimed = 0
        self.tickets = 0
        self._state = [_ShardState() for _ in batcher.shards]
        self._leased_at = 0.0
        self._free: dict[int, bytes | None] = {}
        """Shards no live sweeper held at the last pass, with their holder then (None: free)."""
        self._live = 1  # sweepers seen at the last heartbeat

    # sharing the shards ---------------------------------------------------------------------

    def _own(self) -> list[int]:
        """Heartbeat, then hold about shards / live sweepers of the shards (renewing the ones held)."""
        b = self.batcher
        n = b.layout.count
        k = b.keys
        try:
            # the layout first: a heartbeat back after Redis lost its data, with no layout yet,
            # is what makes a new instance call the layout lost (`layout_missing`)
            b.client.hsetnx(*b.layout.store().args)
            now_ms = b.server_ms()  # Redis' clock, as `stats` and /healthz read it: a host's own can be off
            b.client.zadd(k.sweepers, {self.id: now_ms})
            b.client.zremrangebyscore(k.sweepers, "-inf", now_ms - 2 * self.lease_ms)
            live = set(b.client.zrange(k.sweepers, 0, -1))
            self._live = max(1, len(live))
        except TRANSIENT as exc:  # the namespace's own node away (a cluster): the shards go on
            live = None
            log.warning("sweeper_heartbeat_failed: %s; sharing as at the last one (%d sweepers)",
                        describe(exc), self._live, extra={"event": "sweeper_heartbeat_failed"})
        target = math.ceil(n / self._live)
        start = int(self.id, 16) % n
        owned: list[int] = []
        free: dict[int, bytes | None] = {}
        for i in range(n):
            s = (start + i) % n
            try:  # a shard whose node is away is not held this time; the others are
                if len(owned) >= target and s in self.owned:  # more than our share: a newcomer's
                    self._lease(s, "release")
                    continue
                if len(owned) < target and self._lease(s, "hold"):
                    owned.append(s)
                    continue
                holder: bytes | None = b.client.get(b.shards[s].lease)  # type: ignore[assignment]
                if holder is not None and (live is None or holder in live):
                    continue  # a live sweeper's
                if s in self._free and self._free[s] == holder and (
                        self._lease(s, "hold") if holder is None else self._take(s, holder)):
                    owned.append(s)  # free (or held by no sweeper) at two passes in a row: its sweeper
                else:  # died, or the value is no sweeper's: take it over
                    free[s] = holder
            except TRANSIENT as exc:
                log.warning("sweeper_shard_failed shard=%d: %s; not held this time", s, describe(exc),
                            extra={"event": "sweeper_shard_failed", "shard": s})
        self._free = free
        for s in set(owned) - set(self.owned):  # newly held: no backoff left from an earlier hold
            self._state[s].failed_for = self._state[s].retry_at = 0.0
        if owned != self.owned:
            log.info("sweeper_shards sweeper=%s shards=%s of %d (%d sweepers)", self.id, sorted(owned),
                     n, self._live, extra={"event": "sweeper_shards"})
        self.owned = owned
        self._leased_at = time.monotonic()
        return owned

    def _lease(self, shard: int, mode: str) -> bool:
        k = self.batcher.shards[shard]
        return bool(call(self.batcher.scripts.shard_lease, [k.lease], [self.id, self.lease_ms, mode]))

    def _take(self, shard: int, holder: bytes) -> bool:
        k = self.batcher.shards[shard]
        taken = bool(call(self.batcher.scripts.shard_lease, [k.lease],
                          [self.id, self.lease_ms, "take", holder, max(MAX_LEASE_MS, self.lease_ms)]))
        if taken:
            log.warning("shard_lease_taken shard=%d holder=%r: held by no live sweeper (not a sweeper's "
                        "lease: written by another program?); taken over", shard, holder[:64],
                        extra={"event": "shard_lease_taken", "shard": shard})
        return taken

    def release(self) -> None:
        for s in self.owned:
            with contextlib.suppress(Exception):
                self._lease(s, "release")
        with contextlib.suppress(Exception):
            self.batcher.client.zrem(self.batcher.keys.sweepers, self.id)
        self.owned = []

    # one pass -------------------------------------------------------------------------------

    def run_once(self) -> float:
        """Do what is due now on the shards held, and back the other shards up; return how long
        (s) it may sleep."""
        if not self.owned or time.monotonic() - self._leased_at > self.lease_ms / 3000:
            self._own()
        waits: list[float] = []
        failed: Exception | None = None
        for s in self.owned:  # on a cluster each shard's node on its own: one away holds up no other
            state = self._state[s]
            if time.monotonic() < state.retry_at:
                waits.append(state.retry_at - time.monotonic())
                continue
            try:
                waits.append(self._sweep(s))
                state.failed_for = 0.0
            except TRANSIENT as exc:
                failed = failed or exc
                waits.append(state.failed())
                log.warning("sweeper_shard_failed shard=%d: %s; the other shards go on, this one is tried "
                            "again in %.1fs", s, describe(exc), state.failed_for,
                            extra={"event": "sweeper_shard_failed", "shard": s})
            except ResponseError as exc:  # a key of this shard's of another type, a hostile value:
                # no wait mends it, but the other shards' windows still close on time
                failed = failed or exc
                waits.append(state.failed())
                log.error("sweeper_shard_refused shard=%d: Redis refused a step (%s)%s; the other shards "
                          "go on, this one is tried again in %.1fs", s, describe(exc),
                          self.records.misfiled_hint(exc), state.failed_for,
                          extra={"event": "sweeper_shard_refused", "shard": s})
        if failed is not None and all(self._state[s].failed_for for s in self.owned):
            raise failed  # every shard held is failing: the caller's backoff, as for any failed step
        waits += self._backup([s for s in range(self.batcher.layout.count) if s not in self.owned])
        return min(waits, default=min(self.max_sleep_s, self.lease_ms / 3000))

    def _backup(self, shards: list[int]) -> list[float]:
        """Cut the overdue windows of shards held by another sweeper once they are `backup_ms`
        late: a killed sweeper's windows are cut on time while its lease runs out. Its owner, when
        alive, has cut them already (the flush is atomic, so a double sweep changes nothing)."""
        b = self.batcher
        if not shards or b.clock.now_ms() is not None:  # a ManualClock: only the owner sweeps
            return []
        firsts: dict[int, Any] = {}
        for s in shards:  # a shard whose node is away is its owner's business: skip it
            with contextlib.suppress(*TRANSIENT):
                firsts[s] = b.client.zrange(b.shards[s].deadlines, 0, 0, withscores=True)
        if not any(firsts.values()):
            return []
        try:
            now = b.server_ms()
        except TRANSIENT:
            return []
        waits = []
        for s, first in firsts.items():
            if not first:
                continue
            due = float(first[0][1]) + self.backup_ms
            if due <= now:
                try:
                    step = b.flush_step(self.limit, with_events=False, shard=s)
                except TRANSIENT:
                    continue
                self._count(step)
                self._record_lateness(step)
                if step.batches:
                    log.info("sweeper_backup shard=%d cut=%d: its owner is late", s, len(step.batches),
                             extra={"event": "sweeper_backup"})
            else:
                waits.append((due - now) / 1000)
        return waits

    def _record_lateness(self, step: FlushStep) -> None:
        """Into this process's histogram, and (the last LATENESS_KEPT) into Redis for the
        dashboard's chart."""
        if not step.lateness_ms:
            return
        for late in step.lateness_ms:
            metrics.CUT_LATENESS.observe(late / 1000)
        key = self.batcher.keys.lateness
        pipe = self.batcher.client.pipeline(transaction=False)
        pipe.lpush(key, *(f"{step.server_now_ms} {late}" for late in step.lateness_ms))
        pipe.ltrim(key, 0, LATENESS_KEPT - 1)
        try:
            pipe.execute()
        except (*TRANSIENT, ResponseError) as exc:  # the chart's data, on the namespace's own node
            # (or a key of the wrong type, a hostile writer's): never the shard's step
            log.debug("lateness not recorded: %s", describe(exc))

    def _count(self, step: FlushStep) -> None:
        discarded = sum(b.discarded for b in step.batches)
        self.cut += len(step.batches) - discarded
        self.discarded += discarded

    def _sweep(self, shard: int) -> float:
        b, rec = self.batcher, self.records
        k = b.shards[shard]
        step = b.flush_step(self.limit, with_events=False, shard=shard)
        stepped = time.monotonic()  # `now` below is the server's time at about this point
        self._count(step)
        self._record_lateness(step)
        promoted, next_retry, now = rec.promote(shard, self.limit)
        pipe = b.client.pipeline(transaction=False)
        pipe.zrange(k.ready, 0, 0)
        pipe.zrangebyscore(k.running, "-inf", now - 1, start=0, num=self.limit)
        pipe.zrange(k.running, 0, 0, withscores=True)
        head_rows, expired, first_lease = pipe.execute()
        reclaimed = 0
        for raw in expired:
            try:
                bid = raw.decode("ascii")
            except UnicodeDecodeError:  # no batch id (those are digits): a hostile writer's member,
                # removed so that it holds up no reclaim of this shard at each pass
                b.client.zrem(k.running, raw)
                log.warning("junk_removed shard=%d member=%r: not a batch id, in the running set",
                            shard, raw[:64], extra={"event": "junk_removed", "shard": shard})
                continue
            outcome = rec.reclaim(bid, shard)
            if outcome in (Outcome.RETRY, Outcome.DEAD):
                reclaimed += outcome is Outcome.RETRY
                self.reclaimed += 1
                log.warning("batch_reclaimed batch=%s -> %s: its worker stopped renewing the lease",
                            bid, outcome, extra={"event": "batch_reclaimed", "batch": bid})
        state = self._state[shard]
        head = head_rows[0] if head_rows else None
        if head != state.head:
            state.head, state.head_since = head, stepped
        # A ticket is due when batches came back (reclaimed, promoted) or the oldest ready batch
        # has not moved for nudge_s: its hand-off was lost (producer died after the cut, a worker
        # died with its ticket) or no worker is draining.
        stuck = head is not None and stepped - state.head_since >= self.nudge_s
        if reclaimed or promoted or stuck:
            try:
                self.tickets += self.dispatcher.ensure(max(1, reclaimed + promoted))
                state.head_since = stepped
            except TRANSIENT as exc:  # the queue's Redis away: this shard's step is done; the
                # oldest ready batch stays unmoved, so the next pass nudges again (a pause the
                # dispatcher said once already: not again on every pass)
                (log.debug if isinstance(exc, QueueAway) else log.warning)(
                    "sweeper_ticket_failed shard=%d: %s", shard, describe(exc),
                    extra={"event": "sweeper_ticket_failed", "shard": shard})
        if step.more or len(expired) >= self.limit:
            return 0.0
        nxt = [t for t in (next_retry, first_lease[0][1] if first_lease else None) if t is not None]
        if step.next_deadline_ms is not None and b.clock.now_ms() is None:
            nxt.append(step.next_deadline_ms)
        # minus the round trips since the flush, or every cut comes that much late
        wait = (min(nxt) - now) / 1000 - (time.monotonic() - stepped) if nxt else self.max_sleep_s
        if head is not None:
            wait = min(wait, self.nudge_s)
        return max(0.0, min(wait, self.max_sleep_s, self.lease_ms / 3000))

    def run(self, stop: threading.Event | None = None) -> None:
        """Loop until `stop`: do what is due, then wait for the next due time or a wake message.

        The wait is client-side (`get_message(timeout=...)` on a subscribed connection): a
        server-side BLPOP timeout only fires on Redis's `hz` tick, up to 100 ms late on an idle
        server. accumulate publishes on its shard's wake channel when a new earliest deadline
        appears. A failing step (Redis down or restarting) logs one line and retries with backoff;
        a login or ACL refusal (`refused_by_acl`) is raised: no wait mends it. The wake channel
        is a help, never a condition: while it fails the sweeper sweeps every `max_sleep`, and
        it subscribes afresh every `WAKE_RETRY_S` (a new pub/sub: on a cluster redis-py pins one
        to the node it first used, and after a failover it reconnected to the dead node for
        ever, while every shard's sweep waited on it).
        """
        stop = stop or threading.Event()
        wake: Any = None
        wake_failures, wake_retry_at = 0, 0.0
        backoff = 0.0
        if self.max_sleep_s > self.lease_ms / 3000:
            log.warning("sweeper_max_sleep max_sleep=%.1fs is cut to %.1fs: a sweeper renews its shards' "
                        "leases that often", self.max_sleep_s, self.lease_ms / 3000,
                        extra={"event": "sweeper_max_sleep"})
        log.info("sweeper_started namespace=%s shards=%d limit=%d max_sleep=%.1fs",
                 self.batcher.keys.namespace, self.batcher.layout.count, self.limit,
                 min(self.max_sleep_s, self.lease_ms / 3000),
                 extra={"event": "sweeper_started"})
        last_summary, last = time.monotonic(), (0, 0, 0, 0)
        channels = [k.wake for k in self.batcher.shards]

        def drop_wake(exc: BaseException) -> None:
            """Close it; subscribe afresh at once the first time (Redis restarted), then every
            `WAKE_RETRY_S`."""
            nonlocal wake, wake_failures, wake_retry_at
            wake_failures += 1
            if wake_failures == 2:
                log.warning("sweeper_wake_unavailable: %s; sweeping every %.1fs until it is back",
                            describe(exc), min(self.max_sleep_s, self.lease_ms / 3000),
                            extra={"event": "sweeper_wake_unavailable"})
            if wake is not None:
                with contextlib.suppress(Exception):
                    wake.close()
            wake = None
            wake_retry_at = time.monotonic() + (WAKE_RETRY_S if wake_failures > 1 else 0.0)

        try:
            while not stop.is_set():
                if self.summary_every_s > 0 and time.monotonic() - last_summary >= self.summary_every_s:
                    now = (self.cut, self.discarded, self.reclaimed, self.tickets)
                    log.info("sweeper_summary last %.0fs: cut=%d discarded=%d reclaimed=%d tickets=%d "
                             "shards=%s", time.monotonic() - last_summary,  # the time it covers
                             *(a - b for a, b in zip(now, last, strict=True)), sorted(self.owned),
                             extra={"event": "sweeper_summary"})
                    last_summary, last = time.monotonic(), now
                if wake is None and time.monotonic() >= wake_retry_at:
                    try:  # before reading state, so no wake is missed
                        wake = self.batcher.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                        wake.subscribe(*channels)
                    except Exception as exc:
                        if refused_by_acl(exc) and not stop.is_set():  # a mistake no wait mends:
                            raise  # one clear error (the CLI's)
                        drop_wake(exc)
                try:
                    wait = self.run_once()
                    backoff = 0.0
                except Exception as exc:
                    if refused_by_acl(exc) and not stop.is_set():
                        raise
                    backoff = min(5.0, max(0.1, backoff * 2))
                    log.warning("sweeper_step_failed: %s; retrying in %.1fs", describe(exc), backoff,
                                extra={"event": "sweeper_step_failed"})
                    log.debug("sweeper step failed", exc_info=True)
                    stop.wait(backoff)
                    continue
                if wait < 0.001:
                    continue
                if wake is None:
                    stop.wait(wait)
                    continue
                try:
                    wake.get_message(timeout=wait)
                except Exception as exc:
                    if refused_by_acl(exc) and not stop.is_set():
                        raise
                    drop_wake(exc)
                    continue
                if wake_failures > 1:
                    log.info("sweeper_wake_restored", extra={"event": "sweeper_wake_restored"})
                wake_failures = 0
        finally:
            if wake is not None:
                with contextlib.suppress(Exception):
                    wake.close()
            self.release()
