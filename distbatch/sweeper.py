"""The sweeper: cut expired windows on time, promote retries whose backoff ended, reclaim the
batches of workers whose lease ran out, and make sure a ticket waits while batches are ready.

It sleeps until the earliest thing it has to do (a window deadline, a retry coming due, a lease
running out) and listens on the wake channel meanwhile, so a new earlier deadline published by
accumulate wakes it at once. Any number of sweepers can run: every step is atomic in Redis, and
every step costs O(log N + work due), never a scan of a backlog.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from .batcher import Batcher
from .dispatch import Dispatcher
from .records import Outcome

log = logging.getLogger("distbatch.sweeper")


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
    ) -> None:
        self.batcher = batcher
        self.records = batcher.records
        self.dispatcher = dispatcher or batcher.dispatcher or Dispatcher(batcher.client, batcher.keys)
        self.limit = limit
        self.max_sleep_s = max_sleep_s
        self.nudge_s = nudge_s
        self.summary_every_s = summary_every_s
        self.cut = 0
        self.reclaimed = 0
        self.tickets = 0
        self._head: bytes | None = None
        self._head_since = 0.0

    def run_once(self) -> float:
        """Do what is due now; return how long (s) it may sleep before the next thing is due."""
        b, k, rec = self.batcher, self.batcher.keys, self.records
        step = b.flush_step(self.limit, with_events=False)
        stepped = time.monotonic()  # `now` below is the server's time at about this point
        self.cut += len(step.batches)
        promoted, next_retry, now = rec.promote(self.limit)
        pipe = b.client.pipeline(transaction=False)
        pipe.zrange(k.ready, 0, 0)
        pipe.zrangebyscore(k.running, "-inf", now - 1, start=0, num=self.limit)
        pipe.zrange(k.running, 0, 0, withscores=True)
        head_rows, expired, first_lease = pipe.execute()
        reclaimed = 0
        for bid in (i.decode() for i in expired):
            outcome = rec.reclaim(bid)
            if outcome in (Outcome.RETRY, Outcome.DEAD):
                reclaimed += outcome is Outcome.RETRY
                self.reclaimed += 1
                log.warning("batch_reclaimed batch=%s -> %s: its worker stopped renewing the lease",
                            bid, outcome, extra={"event": "batch_reclaimed", "batch": bid})
        head = head_rows[0] if head_rows else None
        if head != self._head:
            self._head, self._head_since = head, stepped
        # A ticket is due when batches came back (reclaimed, promoted) or the oldest ready batch
        # has not moved for nudge_s: its hand-off was lost (producer died after the cut, a worker
        # died with its ticket) or no worker is draining.
        stuck = head is not None and stepped - self._head_since >= self.nudge_s
        if reclaimed or promoted or stuck:
            self.tickets += self.dispatcher.ensure(max(1, reclaimed + promoted))
            self._head_since = stepped
        if len(step.batches) >= self.limit or len(expired) >= self.limit:
            return 0.0
        nxt = [t for t in (next_retry, first_lease[0][1] if first_lease else None) if t is not None]
        if step.next_deadline_ms is not None and b.clock.now_ms() is None:
            nxt.append(step.next_deadline_ms)
        # minus the round trips since the flush, or every cut comes that much late
        wait = (min(nxt) - now) / 1000 - (time.monotonic() - stepped) if nxt else self.max_sleep_s
        if head is not None:
            wait = min(wait, self.nudge_s)
        return max(0.0, min(wait, self.max_sleep_s))

    def run(self, stop: threading.Event | None = None) -> None:
        """Loop until `stop`: do what is due, then wait for the next due time or a wake message.

        The wait is client-side (`get_message(timeout=...)` on a subscribed connection): a
        server-side BLPOP timeout only fires on Redis's `hz` tick, up to 100 ms late on an idle
        server. accumulate publishes on the wake channel when a new earliest deadline appears.
        A failing step (Redis down or restarting) logs one line and retries with backoff.
        """
        stop = stop or threading.Event()
        wake = self.batcher.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        backoff = 0.0
        log.info("sweeper_started namespace=%s limit=%d max_sleep=%.1fs", self.batcher.keys.namespace,
                 self.limit, self.max_sleep_s, extra={"event": "sweeper_started"})
        last_summary, last = time.monotonic(), (0, 0, 0)
        try:
            while not stop.is_set():
                if self.summary_every_s > 0 and time.monotonic() - last_summary >= self.summary_every_s:
                    now = (self.cut, self.reclaimed, self.tickets)
                    log.info("sweeper_summary last %.0fs: cut=%d reclaimed=%d tickets=%d",
                             self.summary_every_s, *(a - b for a, b in zip(now, last, strict=True)),
                             extra={"event": "sweeper_summary"})
                    last_summary, last = time.monotonic(), now
                try:
                    if not wake.subscribed:  # before reading state, so no wake is missed
                        wake.subscribe(self.batcher.keys.wake)
                    wait = self.run_once()
                    backoff = 0.0
                    if wait >= 0.001:
                        wake.get_message(timeout=wait)
                except Exception as exc:
                    backoff = min(5.0, max(0.1, backoff * 2))
                    log.warning("sweeper_step_failed: %s; retrying in %.1fs", exc, backoff,
                                extra={"event": "sweeper_step_failed"})
                    log.debug("sweeper step failed", exc_info=True)
                    with contextlib.suppress(Exception):
                        wake.reset()
                    stop.wait(backoff)
        finally:
            wake.close()
