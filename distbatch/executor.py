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


class Executor:
    def __init__(self, batcher: Batcher, resolver: HandlerResolver, lease_ms: int = 10_000) -> None:
        self.batcher = batcher
        self.resolver = resolver
        self.lease_ms = lease_ms

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
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(batch_id, stop), daemon=True)
        beat.start()
        started = time.monotonic()
        try:
            fn(batch)
        except Exception as exc:
            stop.set()
            retry = binding.retry
            delay = retry.delay_ms(batch.attempt) if batch.attempt < retry.attempts else None
            status = self.batcher.fail(batch_id, traceback.format_exc(), delay)
            log.warning("handler_failed batch=%s binding=%s attempt=%d/%d -> %s: %r",
                        batch_id, batch.binding, batch.attempt, retry.attempts, status, exc,
                        extra={"event": "handler_failed", "batch": batch_id})
            return Outcome(status, batch_id, batch.attempt)
        finally:
            stop.set()
            beat.join()
        self.batcher.complete(batch_id)
        log.info("batch_delivered batch=%s binding=%s events=%d seconds=%.3f", batch_id,
                 batch.binding, len(batch.events), time.monotonic() - started)
        return Outcome("delivered", batch_id, batch.attempt)

    def _heartbeat(self, batch_id: str, stop: threading.Event) -> None:
        """Renew the lease while the handler runs, so only a dead worker loses its batch."""
        while not stop.wait(self.lease_ms / 3000):
            try:
                self.batcher.renew(batch_id, self.lease_ms)
            except Exception:  # a blip must not kill the handler; the lease has slack
                log.exception("lease renewal failed for batch %s", batch_id)
