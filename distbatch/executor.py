"""Run batches: claim the oldest ready one, hold its lease while the handler runs, then complete
or fail it — every change fenced by the claim's token."""

from __future__ import annotations

import enum
import logging
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass

from . import metrics
from .config import Binding
from .dispatch import Dispatcher
from .errors import HandlerNotAllowed, describe
from .handlers import HandlerResolver
from .records import Claim, Outcome, Records
from .tracing import handler_span

log = logging.getLogger("distbatch.worker")

UNAVAILABLE_RETRY_MS = 5_000
"""How long a batch whose handler this worker cannot run waits before any worker tries again."""
_BINDING_TTL_S = 5.0
BELL_WAIT_S = 0.1
"""The longest a lingering worker waits on the bell before it claims again anyway: Redis'
blocking timeouts resolve at its `hz` (100 ms by default)."""
LINGER_S = 1.0
"""How long a drain waits for the next batch before it gives its ticket back (a burst worker:
20 ms)."""


class Status(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    LEASE_LOST = "lease_lost"  # this worker lost the batch (paused, cut off, timed out): dropped
    UNAVAILABLE = "unavailable"  # handler not runnable here: given back uncounted
    POISON = "poison"  # the record cannot be decoded: dead at once


@dataclass(frozen=True, slots=True)
class Result:
    status: Status
    batch_id: str
    attempt: int = 0
    handler_s: float = 0.0  # how long the handler ran, when it ran


@dataclass(slots=True)
class _Held:
    token: str
    deadline: float  # monotonic; past it the handler is over its timeout and renewals stop
    lost: bool = False


class LeaseKeeper:
    """One thread renews the lease of every batch in hand, every lease/3, in one round trip.

    A batch is claimed with a full lease and the first renewal comes within lease/3, so no lease
    runs out while its worker lives. A renewal the script refuses means the lease is lost (the
    worker was paused or cut off past it and the batch was reclaimed): it logs `lease_lost` and
    the executor drops the outcome. A handler past its timeout is no longer renewed, so a hung
    handler gives its batch back within one lease.
    """

    def __init__(self, records: Records, lease_ms: int) -> None:
        self.records = records
        self.lease_ms = lease_ms
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, batch_id: str, token: str, timeout_ms: int | None) -> _Held:
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else float("inf")
        held = _Held(token, deadline)
        with self._lock:
            self._held[batch_id] = held
            if self._thread is None or not self._thread.is_alive():  # first use, or a forked child
                self._thread = threading.Thread(target=self._run, name="distbatch-lease", daemon=True)
                self._thread.start()
        return held

    def release(self, batch_id: str) -> None:
        with self._lock:
            self._held.pop(batch_id, None)

    def renew_now(self) -> None:
        now = time.monotonic()
        with self._lock:
            items = [(bid, h) for bid, h in self._held.items() if not h.lost]
        live = []
        for bid, h in items:
            if now > h.deadline:
                h.lost = True
                log.error("handler_timeout batch=%s: handler over its timeout; lease no longer "
                          "renewed, the batch goes back to be retried", bid,
                          extra={"event": "handler_timeout", "batch": bid})
            else:
                live.append((bid, h))
        if not live:
            return
        renewed = self.records.renew_many([(bid, h.token) for bid, h in live], self.lease_ms)
        for (bid, h), ok in zip(live, renewed, strict=True):
            with self._lock:  # released meanwhile (completed while we renewed): not lost
                if ok or self._held.get(bid) is not h:
                    continue
                h.lost = True
                log.error("lease_lost batch=%s: this worker no longer holds the batch (paused or cut "
                          "off past its lease); its outcome will be dropped", bid,
                          extra={"event": "lease_lost", "batch": bid})

    def _run(self) -> None:
        while True:
            time.sleep(max(self.lease_ms / 3000, 0.01))
            try:
                self.renew_now()
            except Exception as exc:  # a blip must not stop renewals; the lease has slack
                log.warning("lease renewal failed: %s", describe(exc))


class Executor:
    def __init__(self, records: Records, resolver: HandlerResolver, lease_ms: int = 10_000,
                 dispatcher: Dispatcher | None = None, linger_s: float = LINGER_S) -> None:
        self.records = records
        self.linger_s = linger_s
        self.resolver = resolver
        self.lease_ms = lease_ms
        self.dispatcher = dispatcher
        self.leases = LeaseKeeper(records, lease_ms)
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self._bindings: dict[str, tuple[Binding | None, float]] = {}
        self._chain = False  # complete the batch in hand and claim the next in one round trip
        self._wait_s = 0.0  # ... with a wait on the bell between them, if it was the last one ready
        self._next: Claim | None = None  # claimed with the last complete, to run next
        self._none_ready = False  # ...or that claim found none: wait before asking again

    def _binding(self, key: str) -> Binding | None:
        cached = self._bindings.get(key)
        if cached is None or time.monotonic() - cached[1] > _BINDING_TTL_S:
            cached = (self.records.binding(key), time.monotonic())
            self._bindings[key] = cached
        return cached[0]

    def drain(self, max_batches: int = 100, max_seconds: float = 2.0, linger_s: float | None = None,
              poll_s: float = 0.002) -> dict[str, int]:
        """Run ready batches until none has come for `linger_s` (default: the executor's) or the
        budget is spent (then leave a ticket for the rest, so one job never holds a worker forever
        and others can join).

        Lingering keeps a worker in this loop while batches stream in one at a time, instead of
        paying RQ's ~27 round trips of job bookkeeping (15-20 ms on a busy 2-core machine) before
        the first batch after a pause of the stream. It waits on the shards' bell, which every call
        that makes a batch ready rings (emit, flush, retry, reclaim, replay), with the claim
        pipelined behind the wait and, after the last batch that was ready, behind that batch's
        complete: a worker fed one batch at a time pays one round trip per batch. It claims at least
        every 100 ms anyway (a bell lost with a restarted Redis). Where that cannot be (a linger
        shorter than Redis' blocking timeouts resolve, Redis Cluster) it polls every `poll_s` for 50
        ms, then every 10 ms. A ticket that found nothing to run ends at once.
        """
        linger = self.linger_s if linger_s is None else linger_s
        self._fan_out()
        counts: dict[str, int] = {}
        started = time.monotonic()
        idle_since: float | None = None
        n = 0
        while not self.stop.is_set() or self._next is not None:  # a batch claimed is run
            if self._next is None and (n >= max_batches or time.monotonic() - started > max_seconds):
                if self.dispatcher is not None:
                    self.dispatcher.ensure(1)
                break
            self._chain = (not self.stop.is_set() and n + 1 < max_batches
                           and time.monotonic() - started < max_seconds)
            self._wait_s = BELL_WAIT_S if self._chain and linger >= BELL_WAIT_S else 0.0
            none_ready, self._none_ready = self._none_ready, False  # the last look found none
            try:
                result = None if none_ready else self.run_next()
            finally:
                self._chain = False
            if result is None:
                now = time.monotonic()
                if idle_since is None:
                    idle_since = now
                if n == 0 or now - idle_since >= linger:  # a spare ticket: no batch to wait for
                    break
                if self.records.has_bell and linger - (now - idle_since) >= BELL_WAIT_S:
                    self._next = self.records.wait_and_claim(self.lease_ms, BELL_WAIT_S)
                    self._none_ready = self._next is None
                else:
                    time.sleep(poll_s if now - idle_since < 0.05 else max(poll_s, 0.01))
                continue
            idle_since = None
            n += 1
            counts[result.status] = counts.get(result.status, 0) + 1
            self.counts[result.status] += 1
        return counts

    def _fan_out(self) -> None:
        """More than one batch waiting and no ticket queued: enqueue one, so an idle worker joins."""
        if self.dispatcher is None:
            return
        waiting = self.records.count("ready")
        if waiting > 1:
            self.dispatcher.ensure(waiting - 1)

    def run_next(self) -> Result | None:
        claim, self._next = self._next, None
        if claim is None:
            claim = self.records.claim_next(self.lease_ms)
        return None if claim is None else self.run(claim)

    def run(self, claim: Claim) -> Result:
        """Run a claimed batch's handler and settle the record; the outcome is also counted in
        this process's metrics (`metrics.py`)."""
        batch = claim.batch
        if claim.stale():  # read long after Redis ran it: this process was paused meanwhile
            log.error("lease_lost batch=%s: claimed for this worker while it was paused, and the "
                      "lease ran out before it could start; not run", batch.id,
                      extra={"event": "lease_lost", "batch": batch.id})
            metrics.LEASES_LOST.inc()
            return Result(Status.LEASE_LOST, batch.id, batch.attempt)
        if batch.attempt == 1 and batch.cut_at_ms and claim.error is None:
            delay = max(0.0, time.time() - batch.cut_at_ms / 1000)
            metrics.HANDLER_START_DELAY.labels(batch.binding).observe(delay)
        result = self._run(claim)
        if result.status in (Status.DELIVERED, Status.RETRY, Status.DEAD):
            metrics.HANDLER_DURATION.labels(batch.binding).observe(result.handler_s)
            metrics.BATCH_SIZE.labels(batch.binding).observe(len(batch.events))
        elif result.status is Status.LEASE_LOST:
            metrics.LEASES_LOST.inc()
        metrics.HANDLER_RUNS.labels(batch.binding, result.status.value).inc()
        return result

    def _run(self, claim: Claim) -> Result:
        batch, token, rec = claim.batch, claim.token, self.records
        if claim.error is not None:
            rec.fail(batch.id, token, claim.error, None)
            log.error("batch_poison batch=%s binding=%s: %s; kept as a dead batch", batch.id,
                      batch.binding, claim.error, extra={"event": "batch_poison", "batch": batch.id})
            return Result(Status.POISON, batch.id, batch.attempt)
        binding = self._binding(batch.binding)
        try:
            if binding is None:
                raise HandlerNotAllowed(f"binding={batch.binding!r} is not registered")
            fn = self.resolver.resolve(binding.handler)
        except HandlerNotAllowed as exc:
            rec.fail(batch.id, token, f"HandlerNotAllowed: {exc}", UNAVAILABLE_RETRY_MS, refund=True)
            log.error("handler_unavailable batch=%s %s; left for a worker that can run it (again "
                      "in %ds)", batch.id, exc, UNAVAILABLE_RETRY_MS // 1000,
                      extra={"event": "handler_unavailable", "batch": batch.id})
            return Result(Status.UNAVAILABLE, batch.id, batch.attempt)
        held = self.leases.hold(batch.id, token, binding.retry.timeout_ms)
        started = time.perf_counter()
        try:
            with handler_span(batch):
                fn(batch)
        except Exception as exc:
            handler_s = time.perf_counter() - started
            retry = binding.retry
            delay = retry.delay_ms(batch.attempt) if batch.attempt < retry.attempts else None
            outcome = rec.fail(batch.id, token, traceback.format_exc(), delay)
            if outcome in (Outcome.STALE, Outcome.GONE):
                return self._lost(batch.id, batch.attempt, held.lost)
            log.warning("handler_failed batch=%s binding=%s attempt=%d/%d -> %s: %s",
                        batch.id, batch.binding, batch.attempt, retry.attempts, outcome, describe(exc),
                        extra={"event": "handler_failed", "batch": batch.id})
            return Result(Status(outcome.value), batch.id, batch.attempt, handler_s)
        finally:
            self.leases.release(batch.id)
        handler_s = time.perf_counter() - started
        if self._chain and not self.stop.is_set():
            wait = self._wait_s if claim.left == 0 else 0.0  # none was waiting behind this one
            done, self._next = rec.complete_and_claim(batch.id, token, self.lease_ms, wait_s=wait)
            self._none_ready = self._next is None
        else:
            done = rec.complete(batch.id, token)
        if done is None:
            return self._lost(batch.id, batch.attempt, held.lost)
        log.debug("batch_delivered batch=%s binding=%s events=%d seconds=%.3f", batch.id,
                 batch.binding, len(batch.events), handler_s)
        return Result(Status.DELIVERED, batch.id, batch.attempt, handler_s)

    @staticmethod
    def _lost(batch_id: str, attempt: int, logged: bool) -> Result:
        if not logged:
            log.error("lease_lost batch=%s: this worker no longer holds the batch; its outcome is "
                      "dropped", batch_id, extra={"event": "lease_lost", "batch": batch_id})
        return Result(Status.LEASE_LOST, batch_id, attempt)
