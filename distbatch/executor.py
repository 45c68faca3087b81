"""Run batches: claim the oldest ready ones (several per round trip when a backlog waits), hold
their leases from the claim on, run each handler, then complete the round with the next claim or
fail a batch — every change fenced by its claim's token."""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import math
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from . import metrics
from .config import Binding
from .dispatch import Dispatcher, hand_off
from .errors import ConfigError, HandlerNotAllowed, HandlerTimeout, describe
from .handler_timeout import bounded
from .handlers import HandlerResolver
from .interrupts import StopFlag
from .logbudget import LogBudget
from .models import Batch
from .records import ERROR_TAIL, Claim, Outcome, Records, lease_over_by
from .tracing import handler_span
from .transport import OUTAGE

log = logging.getLogger("distbatch.worker")

IN_HAND_BUDGET_S = 0.010
"""How much handler time a worker claims in one round trip: the batches it takes wait behind
each other's handlers, so a round takes only as many as its handlers (by their recent times) run
in 10 ms. Handlers slower than 5 ms take one batch at a time, as other workers can run the rest.
(5 ms was tried first: under load, when handlers' own round trips slow down, it cut the rounds
short just when the worker needed them.)"""
MAX_IN_HAND = 16
HANDLER_TIMES = 9
"""The handler time a round is sized by is the median of the latest nine: one handler preempted
for 30 ms (a busy machine) moved a moving average enough to claim one batch at a time for dozens
of rounds, just while the backlog that pause left needed the rounds; a median follows handlers
that really slow down after five of them."""
ROUND_LIMIT_S = 0.050
"""Past this since a round's first handler started, the batches of the round not started yet are
given back (`LeaseKeeper.give_back`): five times `IN_HAND_BUDGET_S`, the handler time a round is
claimed for, so a round whose handlers run somewhat slower than they did is not cut short."""
UNAVAILABLE_RETRY_MS = 5_000
"""How long a batch whose handler this worker cannot run waits before any worker tries again."""
_BINDING_TTL_S = 5.0
_BINDINGS_KEPT = 1024
BELL_WAIT_S = 0.1
"""The longest a lingering worker waits on the bell before it claims again anyway: Redis'
blocking timeouts resolve at its `hz` (100 ms by default)."""
LINGER_S = 1.0
"""How long a drain waits for the next batch before it gives its ticket back (a burst worker:
20 ms)."""


def formatted(exc: BaseException) -> str:
    """The traceback kept on a failed batch (`ERROR_TAIL` characters): its head, where the
    frames and the exception's type are, and its tail, where the message ends. The tail alone was
    all message when the message was long (a megabyte: no type, no line that raised)."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception as failed:  # a message whose str() raises is shown as such by traceback
        text = f"{type(exc).__name__} (its traceback could not be formatted: {describe(failed)})"
    if len(text) <= ERROR_TAIL:
        return text
    half = ERROR_TAIL // 2 - 40
    return f"{text[:half]}\n... ({len(text) - 2 * half:,} characters left out) ...\n{text[-half:]}"


def _finish(ran: object, path: str) -> None:
    """What a handler returned, if it is work still to do: an `async def` handler's coroutine
    is run to its end here (it was dropped unawaited, and its batch counted delivered); a
    generator is no handler (its body would never run): it fails the batch, saying so."""
    if inspect.isawaitable(ran):
        async def run() -> object:
            return await ran
        asyncio.run(run())
    elif inspect.isgenerator(ran) or inspect.isasyncgen(ran):
        raise TypeError(f"handler={path!r} is a generator function: its body never runs; a handler is "
                        "a plain or an async function")


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
    over_by: float  # monotonic; past it the lease has surely run out unless renewed meanwhile
    sure_until: float  # monotonic; until then the lease is surely alive
    lost: bool = False
    started: float | None = None  # monotonic, when its handler started (None: waiting in hand)
    running: bool = False  # its handler is running now
    given_back: bool = False  # given back unstarted: not to be run here


class LeaseKeeper:
    """One thread renews the lease of every batch in hand, every lease/3, in one round trip.

    A batch is claimed with a full lease and the first renewal comes within lease/3, so no lease
    runs out while its worker lives. A renewal the script refuses means the lease is lost (the
    worker was paused or cut off past it and the batch was reclaimed): it logs `lease_lost` and
    the executor drops the outcome. A handler past its timeout is no longer renewed, so a hung
    handler gives its batch back within one lease; and batches waiting in hand behind a handler
    that has run past the round's limit are given back (ready again, their try refunded), so a
    slow or hung handler holds up no batch claimed with it for longer than lease/3.
    """

    def __init__(self, records: Records, lease_ms: int) -> None:
        self.records = records
        self.lease_ms = lease_ms
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._errors = LogBudget(3)  # a failure that is no outage comes back at every renewal

    def hold(self, batch_id: str, token: str, timeout_ms: int | None,
             over_by: float = math.inf, sure_until: float = math.inf) -> _Held:
        """Renew this batch's lease from now on; `timeout_ms` (its handler's timeout) stops that
        once the handler has run that long; `limit` sets it for a batch held before it runs."""
        held = _Held(token, math.inf, over_by, sure_until)
        self.limit(held, timeout_ms)
        with self._lock:
            self._held[batch_id] = held
            if self._thread is None or not self._thread.is_alive():  # first use, or a forked child
                self._thread = threading.Thread(target=self._run, name="distbatch-lease", daemon=True)
                self._thread.start()
        return held

    @staticmethod
    def limit(held: _Held, timeout_ms: int | None) -> None:
        """Renewals stop `timeout_ms` from now (a handler's timeout); None: no limit."""
        held.deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else math.inf

    def release(self, batch_id: str) -> None:
        with self._lock:
            self._held.pop(batch_id, None)

    def begin(self, held: _Held) -> bool:
        """Mark a batch in hand as started, unless it was given back meanwhile (then False)."""
        with self._lock:
            if held.given_back:
                return False
            held.started, held.running = time.monotonic(), True
            return True

    def give_back(self, items: Sequence[tuple[str, _Held]], why: str) -> None:
        """Give back batches in hand that have not started: ready again at once, their try
        refunded, for any worker (best effort: if Redis is away their leases run out instead)."""
        with self._lock:
            back = [(bid, h) for bid, h in items if h.started is None and not h.given_back]
            for bid, h in back:
                h.given_back = True
                self._held.pop(bid, None)
        for bid, h in back:
            try:
                self.records.fail(bid, h.token, f"given back unstarted: {why}", 0, refund=True)
            except Exception as exc:
                log.warning("give_back_failed batch=%s: %s; its lease runs out instead", bid,
                            describe(exc), extra={"event": "give_back_failed", "batch": bid})
        if back:
            log.info("batches_given_back n=%d: %s", len(back), why,
                     extra={"event": "batches_given_back"})

    def renew_now(self) -> None:
        now = time.monotonic()
        with self._lock:
            items = [(bid, h) for bid, h in self._held.items() if not h.lost]
            stuck = any(h.running and h.started is not None and now - h.started > ROUND_LIMIT_S
                        for _, h in items)
        if stuck:
            self.give_back(items, "a handler of its round ran long")
            items = [(bid, h) for bid, h in items if not h.given_back]
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
        sent = time.monotonic()
        renewed = self.records.renew_many([(bid, h.token) for bid, h in live], self.lease_ms)
        for (bid, h), ok in zip(live, renewed, strict=True):
            with self._lock:  # released meanwhile (completed while we renewed): not lost
                if ok:
                    h.over_by = max(h.over_by, lease_over_by(sent, 0.0, self.lease_ms))
                    h.sure_until = max(h.sure_until, sent + self.lease_ms / 1000)
                if ok is not False or self._held.get(bid) is not h:  # None: not known, tried again
                    continue
                h.lost = True
                log.error("lease_lost batch=%s: this worker no longer holds the batch (paused or cut "
                          "off past its lease); its outcome will be dropped", bid,
                          extra={"event": "lease_lost", "batch": bid})

    def _run(self) -> None:
        while True:
            time.sleep(max(self.lease_ms / 3000, 0.01))
            with self._lock:
                if not self._held:  # nothing to renew: end here (`hold` starts another), so an
                    self._thread = None  # executor let go of leaves no thread behind
                    return
            try:
                self.renew_now()
            except OUTAGE as exc:  # a blip must not stop renewals; the lease has slack
                log.warning("lease renewal failed: %s", describe(exc))
            except Exception as exc:  # no outage (a refusal, a bug): said with its traceback,
                more = self._errors.take()  # which the one-line warning above left out, a few
                if more is not None:  # times a minute (it comes back at every renewal)
                    log.error("lease_renewal_error: %s; renewals go on%s", describe(exc), more,
                              exc_info=True, extra={"event": "lease_renewal_error"})


class Executor:
    def __init__(self, records: Records, resolver: HandlerResolver, lease_ms: int = 10_000,
                 dispatcher: Dispatcher | None = None, linger_s: float = LINGER_S,
                 stop: StopFlag | None = None, stop_on_refusal: bool = False) -> None:
        """`stop_on_refusal`: a drain the ACL refuses stops this executor and keeps the error
        (`mistake`), for its worker to end with; `distbatch worker` asks it, a plain `rq worker`
        cannot be ended from a job and pauses instead."""
        self.records = records
        self.linger_s = linger_s
        self.resolver = resolver
        self._unavailable_lines = LogBudget(20)
        self.lease_ms = lease_ms
        self.dispatcher = dispatcher
        self.leases = LeaseKeeper(records, lease_ms)
        self.stop = stop or StopFlag()  # set (a signal handler may): finish the batch in hand, take no more
        self.counts: Counter[str] = Counter()
        self._bindings: dict[str, tuple[Binding | None, float]] = {}
        self._in_hand: deque[tuple[Claim, _Held]] = deque()  # claimed, leases held, not started yet
        self._none_ready = False  # the last claim found none: wait on the bell before asking again
        self._handler_times: deque[float] = deque(maxlen=HANDLER_TIMES)  # the latest handlers' seconds
        self.mistake: BaseException | None = None  # a drain refused by the ACL: the worker raises it
        self.stop_on_refusal = stop_on_refusal
        self.refused = False  # the last drain Redis refused (a key of the wrong type): no fan-out

    def _binding(self, key: str) -> Binding | None:
        """A batch's binding, read at most every `_BINDING_TTL_S`; at most `_BINDINGS_KEPT` kept
        (batch records name their binding: a hostile writer's must not grow the worker)."""
        cached = self._bindings.get(key)
        if cached is None or time.monotonic() - cached[1] > _BINDING_TTL_S:
            cached = (self.records.binding(key), time.monotonic())
            if len(self._bindings) >= _BINDINGS_KEPT:
                self._bindings.clear()
            self._bindings[key] = cached
        return cached[0]

    def _want(self) -> int:
        """How many batches to claim at once (`IN_HAND_BUDGET_S`): one until a handler has run."""
        if not self._handler_times:
            return 1
        typical = sorted(self._handler_times)[(len(self._handler_times) - 1) // 2]  # low median
        return max(1, min(MAX_IN_HAND, int(IN_HAND_BUDGET_S / max(typical, 1e-4))))

    def _take(self, claims: list[Claim]) -> None:
        """Batches claimed are held (their leases renewed) from the moment they are read."""
        for claim in claims:
            self._in_hand.append((claim, self.leases.hold(claim.batch.id, claim.token, None,
                                                          claim.stale_after, claim.sure_until)))

    def drain(self, max_batches: int = 100, max_seconds: float = 2.0, linger_s: float | None = None,
              poll_s: float = 0.002) -> dict[str, int]:
        """Run ready batches until none has come for `linger_s` (default: the executor's) or the
        budget is spent (then leave a ticket for the rest, so one job never holds a worker forever
        and others can join).

        Lingering keeps a worker in this loop while batches stream in one at a time, instead of
        paying RQ's ~27 round trips of job bookkeeping (15-20 ms on a busy 2-core machine) before
        the first batch after a pause of the stream. It waits on the shards' bell, which every call
        that makes a batch ready rings (emit, flush, retry, reclaim, replay), with the claim
        pipelined behind the wait and, after the last batch that was ready, behind the completes
        of the batches in hand: a worker fed one batch at a time pays one round trip per batch,
        and one with a backlog claims several at once (`IN_HAND_BUDGET_S`) and settles them with
        the next claim, one round trip per round. It claims at least every 100 ms anyway (a bell
        lost with a restarted Redis). Where that cannot be (a linger shorter than Redis' blocking
        timeouts resolve, Redis Cluster) it polls every `poll_s` for 50 ms, then every 10 ms. A
        ticket that found nothing to run ends at once.
        """
        linger = self.linger_s if linger_s is None else linger_s
        counts: dict[str, int] = {}
        started = time.monotonic()
        idle_since: float | None = None
        n = 0
        fanned = False
        while not self.stop.is_set() or self._in_hand:  # batches claimed are run
            if not self._in_hand:
                if n >= max_batches or time.monotonic() - started > max_seconds:
                    hand_off(self.dispatcher, ())  # a ticket for the rest; never raises
                    break
                none_ready, self._none_ready = self._none_ready, False  # the last look found none
                if not none_ready:
                    self._take(self.records.claim_some(self.lease_ms, min(self._want(), max_batches - n)))
            if not fanned:  # after the first claim went through: a drain Redis refuses (the ACL)
                fanned = True  # fans out no ticket, in a forking worker's fresh child too
                self._fan_out()
            if not self._in_hand:
                now = time.monotonic()
                if idle_since is None:
                    idle_since = now
                if n == 0 or now - idle_since >= linger:  # a spare ticket: no batch to wait for
                    break
                if self.records.has_bell and linger - (now - idle_since) >= BELL_WAIT_S:
                    claims = self.records.wait_and_claim(self.lease_ms, BELL_WAIT_S,
                                                         min(self._want(), max_batches - n))
                    self._take(claims)
                    self._none_ready = not claims
                else:
                    time.sleep(poll_s if now - idle_since < 0.05 else max(poll_s, 0.01))
                continue
            idle_since = None
            ahead = n + len(self._in_hand)
            chain = (not self.stop.is_set() and ahead < max_batches
                     and time.monotonic() - started < max_seconds)
            wait_s = BELL_WAIT_S if chain and linger >= BELL_WAIT_S else 0.0
            for result in self._run_in_hand(max_batches - ahead if chain else 0, wait_s):
                n += 1
                counts[result.status] = counts.get(result.status, 0) + 1
                self.counts[result.status] += 1
        return counts

    def _fan_out(self) -> None:
        """More than one batch waiting and no ticket queued: enqueue one, so an idle worker joins."""
        if self.dispatcher is None or self.refused:
            return
        try:
            waiting = self.records.count("ready")
        except OUTAGE as exc:  # a node away (a cluster): the drain still runs what it can reach
            log.debug("fan-out skipped: %s", describe(exc))
            return
        if waiting > 1:
            try:
                self.dispatcher.ensure(waiting - 1)
            except OUTAGE as exc:  # best effort: the queue away ends no drain
                log.debug("fan-out skipped: %s", describe(exc))

    def _run_in_hand(self, cap: int, wait_s: float) -> list[Result]:
        """Run every batch in hand, then complete those whose handler returned in one round trip,
        claiming more with it (`_want`, at most `cap`; with a wait on the bell first when the last
        claim left none ready and `wait_s`). A round that runs past `ROUND_LIMIT_S` gives back
        the batches it has not started. If a call fails, the round is salvaged as far as Redis
        lets it (`_salvage`) and let go: what is left runs elsewhere once its lease runs out."""
        results: list[Result] = []
        delivered: list[tuple[Claim, _Held, float]] = []
        round_ids = [c.batch.id for c, _ in self._in_hand]
        began: float | None = None
        left = 0
        settled_ok = False
        try:
            while self._in_hand:
                if began is not None and time.monotonic() - began > ROUND_LIMIT_S:
                    self.leases.give_back([(c.batch.id, h) for c, h in self._in_hand],
                                          "the round it was claimed in ran long")
                    self._in_hand.clear()
                    left = 1  # ready again: no wait on the bell
                    break
                claim, held = self._in_hand.popleft()
                left = claim.left
                result = self._start(claim, held)
                if began is None:
                    began = held.started
                if result is None:  # given back meanwhile by the lease keeper
                    left = 1
                elif isinstance(result, Result):
                    results.append(self._observed(claim, result))
                else:
                    delivered.append((claim, held, result))
            if not delivered:
                settled_ok = True
                return results
            done = [(c.batch.id, c.token) for c, _, _ in delivered]
            want = min(self._want(), cap) if not self.stop.is_set() else 0
            wait = wait_s if left == 0 else 0.0  # none was waiting behind these
            self._let_go(round_ids)  # before the complete: a renewal after it would find them gone
            settled, claims = self.records.complete_and_claim(done, self.lease_ms, want, wait_s=wait)
            settled_ok = True
        finally:
            if not settled_ok:
                self._salvage(delivered)
            self._in_hand.clear()
            self._let_go(round_ids)
        self._take(claims)
        self._none_ready = want > 0 and not claims
        for (claim, held, handler_s), n in zip(delivered, settled, strict=True):
            batch = claim.batch
            if n is None:
                result = self._lost(batch.id, batch.attempt, held.lost)
            else:
                log.debug("batch_delivered batch=%s binding=%s events=%d seconds=%.3f", batch.id,
                          batch.binding, len(batch.events), handler_s)
                result = Result(Status.DELIVERED, batch.id, batch.attempt, handler_s)
            results.append(self._observed(claim, result))
        return results

    def _salvage(self, delivered: list[tuple[Claim, _Held, float]]) -> None:
        """A call failed mid-round: give back the batches not started (their tries refunded) and
        complete those whose handler returned, as far as Redis answers; what fails here runs
        again elsewhere once its lease runs out."""
        self.leases.give_back([(c.batch.id, h) for c, h in self._in_hand], "its round failed")
        if not delivered:
            return
        try:
            self.records.complete_and_claim([(c.batch.id, c.token) for c, _, _ in delivered],
                                            self.lease_ms, 0)
        except Exception as exc:
            log.warning("complete_failed batches=%s: %s; each whose complete Redis did not run runs "
                        "again once its lease runs out",
                        ",".join(c.batch.id for c, _, _ in delivered), describe(exc),
                        extra={"event": "complete_failed"})

    def _let_go(self, batch_ids: list[str]) -> None:
        for bid in batch_ids:
            self.leases.release(bid)

    def run(self, claim: Claim) -> Result:
        """Run a claimed batch's handler and settle the record; the outcome is also counted in
        this process's metrics (`metrics.py`)."""
        (result,) = self.run_all([claim])
        return result

    def run_all(self, claims: list[Claim]) -> list[Result]:
        """Run claimed batches as one round (completed together), claiming nothing more: a
        Result for each that ran or was settled (none for one given back unstarted)."""
        self._take(claims)
        return self._run_in_hand(0, 0.0)

    def _observed(self, claim: Claim, result: Result) -> Result:
        batch = claim.batch
        binding = metrics.binding_label(batch.binding)
        if result.status in (Status.DELIVERED, Status.RETRY, Status.DEAD):
            metrics.HANDLER_DURATION.labels(binding).observe(result.handler_s)
            metrics.BATCH_SIZE.labels(binding).observe(len(batch.events))
        elif result.status is Status.LEASE_LOST:
            metrics.LEASES_LOST.inc()
        metrics.HANDLER_RUNS.labels(binding, result.status.value).inc()
        return result

    def _start(self, claim: Claim, held: _Held) -> Result | float | None:
        """Run one batch in hand: a Result when it is settled here (not run, failed, poison), the
        handler's seconds when it returned and the batch waits to be completed, None when the
        lease keeper gave it back before it could start."""
        batch, token, rec = claim.batch, claim.token, self.records
        if held.given_back:
            return None
        logged = held.lost  # the lease keeper found it lost and said so
        now = time.monotonic()
        if not held.lost and held.over_by >= now > held.sure_until - self.lease_ms / 3000:
            # kept (or read) late, as after a pause: its lease may be about to run out, or gone.
            # Ask Redis before starting (a renewal), instead of racing the sweeper's reclaim
            if rec.renew(batch.id, token, self.lease_ms):
                held.sure_until = max(held.sure_until, now + self.lease_ms / 1000)
                held.over_by = max(held.over_by, lease_over_by(time.monotonic(), 0.0, self.lease_ms))
            else:
                held.lost = True
        if held.lost or time.monotonic() > held.over_by:
            # read, or kept in hand, past its lease: this process was paused meanwhile
            if not logged:
                log.error("lease_lost batch=%s: claimed for this worker while it was paused, and "
                          "the lease ran out before it could start; not run", batch.id,
                          extra={"event": "lease_lost", "batch": batch.id})
            return Result(Status.LEASE_LOST, batch.id, batch.attempt)
        try:  # before it starts: Redis away here gives it back with the batches behind it
            looked_up: Binding | ConfigError | None = self._binding(batch.binding)
        except ConfigError as exc:  # its definition is unreadable: as a handler not runnable here
            looked_up = exc
        except OUTAGE:
            self._in_hand.appendleft((claim, held))
            raise
        if not self.leases.begin(held):
            return None
        if claim.error is not None:
            self.leases.release(batch.id)  # settled here: a renewal after the fail would say lost
            rec.fail(batch.id, token, claim.error, None)
            log.error("batch_poison batch=%s binding=%s: %s; kept as a dead batch", batch.id,
                      batch.binding, claim.error, extra={"event": "batch_poison", "batch": batch.id})
            return Result(Status.POISON, batch.id, batch.attempt)
        try:
            if isinstance(looked_up, ConfigError):
                raise looked_up
            binding = looked_up
            if binding is None:
                raise HandlerNotAllowed(f"binding={batch.binding!r} is not registered")
            fn = self.resolver.resolve(binding.handler)
        except (HandlerNotAllowed, ConfigError) as exc:  # ConfigError: its definition is unreadable
            self.leases.release(batch.id)
            rec.fail(batch.id, token, describe(exc), UNAVAILABLE_RETRY_MS, refund=True)
            more = self._unavailable_lines.take()  # a line per batch every 5 s, for as long as it waits
            if more is not None:
                log.error("handler_unavailable batch=%s binding=%s %s; left for a worker that can run "
                          "it (again in %ds)%s", batch.id, batch.binding, exc, UNAVAILABLE_RETRY_MS // 1000,
                          more, extra={"event": "handler_unavailable", "batch": batch.id})
            return Result(Status.UNAVAILABLE, batch.id, batch.attempt)
        if batch.attempt == 1 and batch.cut_at_ms:  # the handler starts now (not when given back)
            waited = max(0.0, time.time() - batch.cut_at_ms / 1000)
            metrics.HANDLER_START_DELAY.labels(metrics.binding_label(batch.binding)).observe(waited)
        self.leases.limit(held, binding.retry.timeout_ms)
        started = time.perf_counter()
        returned = False
        try:
            with bounded(binding.retry.timeout_ms), handler_span(batch):
                ran = fn(batch)
                if ran is not None:
                    _finish(ran, binding.handler)
                returned = True
        except HandlerTimeout as exc:
            if not returned:  # else the alarm came as it returned: delivered
                self._timed_out(batch)
                return self._failed(claim, held, binding, started, exc)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit, its own: failed too
            # (the signals that stop a worker are taken by a thread, never raised in a handler;
            # uncaught, it waited out the lease and went dead as "the worker stopped renewing")
            return self._failed(claim, held, binding, started, exc)
        handler_s = time.perf_counter() - started
        self._note(handler_s)
        held.running = False
        self.leases.limit(held, None)  # its handler returned: held until completed with the round
        return handler_s

    @staticmethod
    def _timed_out(batch: Batch) -> None:
        log.error("handler_interrupted batch=%s binding=%s: past its timeout; failed (retried or kept "
                  "dead, as its retry policy says)", batch.id, batch.binding,
                  extra={"event": "handler_interrupted", "batch": batch.id})

    def _failed(self, claim: Claim, held: _Held, binding: Binding, started: float,
                exc: BaseException) -> Result:
        """The handler raised (or was interrupted): the batch is retried or kept dead."""
        batch, token, rec = claim.batch, claim.token, self.records
        handler_s = time.perf_counter() - started
        self._note(handler_s)
        held.running = False
        self.leases.release(batch.id)
        retry = binding.retry
        delay = retry.delay_ms(batch.attempt) if batch.attempt < retry.attempts else None
        outcome = rec.fail(batch.id, token, formatted(exc), delay)
        if outcome in (Outcome.STALE, Outcome.GONE):
            return self._lost(batch.id, batch.attempt, held.lost)
        log.warning("handler_failed batch=%s binding=%s attempt=%d/%d -> %s: %s",
                    batch.id, batch.binding, batch.attempt, retry.attempts, outcome,
                    describe(exc),
                    extra={"event": "handler_failed", "batch": batch.id})
        return Result(Status(outcome.value), batch.id, batch.attempt, handler_s)

    def _note(self, handler_s: float) -> None:
        self._handler_times.append(handler_s)

    @staticmethod
    def _lost(batch_id: str, attempt: int, logged: bool) -> Result:
        if not logged:
            log.error("lease_lost batch=%s: this worker no longer holds the batch; its outcome is "
                      "dropped", batch_id, extra={"event": "lease_lost", "batch": batch_id})
        return Result(Status.LEASE_LOST, batch_id, attempt)
