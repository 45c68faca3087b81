"""Run one batch: claim it, hold its lease while the handler runs, then complete or fail it."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass

from .batcher import Batcher
from .errors import HandlerNotAllowed
from .handlers import HandlerResolver

log = logging.getLogger("distbatch.worker")


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # delivered, retry, dead, gone, busy, refused
    batch_id: str
    attempt: int = 0


class LeaseKeeper:
    """One thread renews the lease of every batch in hand, every lease/3.

    A thread per batch cost more than the whole claim for small handlers. A batch is claimed with
    a full lease, and the first renewal comes within lease/3 of any start, so no lease runs out
    while its worker lives. Renewing a batch that just finished is a no-op (`ZADD XX`).
    """

    def __init__(self, batcher: Batcher, lease_ms: int) -> None:
        self.batcher = batcher
        self.lease_ms = lease_ms
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, batch_id: str) -> None:
        with self._lock:
            self._held.add(batch_id)
            if self._thread is None or not self._thread.is_alive():  # first use, or a forked child
                self._thread = threading.Thread(target=self._run, name="distbatch-lease", daemon=True)
                self._thread.start()

    def release(self, batch_id: str) -> None:
        with self._lock:
            self._held.discard(batch_id)

    def _run(self) -> None:
        while True:
            time.sleep(max(self.lease_ms / 3000, 0.01))
            with self._lock:
                held = list(self._held)
            for batch_id in held:
                try:
                    self.batcher.renew(batch_id, self.lease_ms)
                except Exception:  # a blip must not stop renewals; the lease has slack
                    log.exception("lease renewal failed for batch %s", batch_id)


class Executor:
    def __init__(self, batcher: Batcher, resolver: HandlerResolver, lease_ms: int = 10_000) -> None:
        self.batcher = batcher
        self.resolver = resolver
        self.lease_ms = lease_ms
        self.leases = LeaseKeeper(batcher, lease_ms)

    def run(self, batch_id: str) -> Outcome:
        claim = self.batcher.claim(batch_id, self.lease_ms)
        if claim.batch is None:
            return Outcome(claim.status, batch_id)
        batch = claim.batch
        binding = self.batcher.binding(batch.binding)
        try:
            if binding is None:
                raise HandlerNotAllowed(f"binding={batch.binding!r} is no longer registered")
            fn = self.resolver.resolve(binding.handler)
        except HandlerNotAllowed as exc:
            log.error("handler_refused batch=%s %s", batch_id, exc,
                      extra={"event": "handler_refused", "batch": batch_id})
            self.batcher.fail(batch_id, f"HandlerNotAllowed: {exc}", None)
            return Outcome("refused", batch_id, batch.attempt)
        self.leases.hold(batch_id)
        started = time.monotonic()
        try:
            fn(batch)
        except Exception as exc:
            retry = binding.retry
            delay = retry.delay_ms(batch.attempt) if batch.attempt < retry.attempts else None
            status = self.batcher.fail(batch_id, traceback.format_exc(), delay)
            log.warning("handler_failed batch=%s binding=%s attempt=%d/%d -> %s: %r",
                        batch_id, batch.binding, batch.attempt, retry.attempts, status, exc,
                        extra={"event": "handler_failed", "batch": batch_id})
            return Outcome(status, batch_id, batch.attempt)
        finally:
            self.leases.release(batch_id)
        self.batcher.complete(batch_id)
        log.info("batch_delivered batch=%s binding=%s events=%d seconds=%.3f", batch_id,
                 batch.binding, len(batch.events), time.monotonic() - started)
        return Outcome("delivered", batch_id, batch.attempt)
