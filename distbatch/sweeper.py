"""The sweeper: cut expired windows on time, hand off orphaned and retried batches, reclaim the
batches of workers that died.

It sleeps until the earliest thing it has to do (a window deadline, a ready batch coming due, a
lease running out) and listens on the wake channel meanwhile, so a new earlier deadline published
by accumulate wakes it at once. Any number of sweepers can run: every step is atomic in Redis.
"""

from __future__ import annotations

import logging
import threading
import time

from .batcher import Batcher
from .dispatch import Dispatcher, job_id

log = logging.getLogger("distbatch.sweeper")


class Sweeper:
    def __init__(
        self,
        batcher: Batcher,
        dispatcher: Dispatcher | None = None,
        *,
        limit: int = 500,
        max_sleep_s: float = 1.0,
    ) -> None:
        self.batcher = batcher
        self.dispatcher = dispatcher or Dispatcher(batcher)
        batcher.on_cut = self.dispatcher
        self.limit = limit
        self.max_sleep_s = max_sleep_s
        self.cut = 0
        self.handed_off = 0
        self.reclaimed = 0

    def run_once(self) -> float:
        """Do what is due now; return how long (s) it may sleep before the next thing is due."""
        b, k = self.batcher, self.batcher.keys
        step = b.flush_step(self.limit, with_events=False)
        stepped = time.monotonic()  # `now` below is the server's time at this point
        self.cut += len(step.batches)
        if len(step.batches) >= self.limit:
            return 0.0
        now = step.server_now_ms
        pipe = b.client.pipeline(transaction=False)
        pipe.zrangebyscore(k.ready, "-inf", now, start=0, num=self.limit)
        pipe.zrangebyscore(k.running, "-inf", now, start=0, num=self.limit)
        due, expired = pipe.execute()
        due = self._still_queued([i.decode() for i in due], now)
        for bid in (i.decode() for i in expired):
            if self._reclaim(bid) == "retry":
                due.append(bid)
        if due:
            self.dispatcher(due, now)
            self.handed_off += len(due)
            log.debug("handed off %d batches", len(due))
        if len(due) >= self.limit:
            return 0.0
        pipe.zrange(k.ready, 0, 0, withscores=True)
        pipe.zrange(k.running, 0, 0, withscores=True)
        nxt = [rows[0][1] for rows in pipe.execute() if rows]
        if step.next_deadline_ms is not None and b.clock.now_ms() is None:
            nxt.append(step.next_deadline_ms)
        # minus the round trips since the flush, or every cut comes that much late
        wait = (min(nxt) - now) / 1000 - (time.monotonic() - stepped) if nxt else self.max_sleep_s
        return max(0.0, min(wait, self.max_sleep_s))

    def _still_queued(self, due: list[str], now_ms: int) -> list[str]:
        """Of the batches due for hand-off, those whose job still sits in the queue only get
        their due time pushed out; the rest (never enqueued, or taken by a worker that died
        before claiming) are enqueued again."""
        if not due:
            return due
        ns = self.batcher.keys.namespace
        queue_key = self.dispatcher.queue.key
        pipe = self.batcher.client.pipeline(transaction=False)
        for bid in due:
            pipe.lpos(queue_key, job_id(ns, bid))  # a job's status stays "queued" if its worker
        positions = pipe.execute()  # died right after taking it: only the list itself tells
        waiting = [bid for bid, pos in zip(due, positions, strict=True) if pos is not None]
        self.batcher.mark_handed_off(waiting, self.dispatcher.redeliver_after_ms, now_ms)
        return [bid for bid in due if bid not in set(waiting)]

    def _reclaim(self, batch_id: str) -> str:
        """A lease ran out: its worker stopped renewing it (killed, or cut off from Redis)."""
        b = self.batcher
        attempt = b.client.hget(b.keys.batch(batch_id), "attempt")
        member = b.client.hget(b.keys.batch(batch_id), "member")
        if attempt is None or member is None:
            return b.fail(batch_id, "", 0, only_if_expired=True)
        binding = b.binding(member.decode().split("|", 1)[0])
        attempts = binding.retry.attempts if binding else 1
        status = b.fail(
            batch_id, "lease expired: the worker running it stopped renewing (killed or cut off)",
            0 if int(attempt) < attempts else None, only_if_expired=True,
        )
        if status != "unchanged":
            self.reclaimed += 1
            log.warning("batch_reclaimed batch=%s attempt=%s -> %s", batch_id, attempt.decode(),
                        status, extra={"event": "batch_reclaimed", "batch": batch_id})
        return status

    def run(self, stop: threading.Event | None = None) -> None:
        """Loop until `stop`: do what is due, then wait for the next due time or a wake message.

        The wait is client-side (`get_message(timeout=...)` on a subscribed connection): a
        server-side BLPOP timeout only fires on Redis's `hz` tick, up to 100 ms late on an idle
        server. accumulate publishes on the wake channel when a new earliest deadline appears.
        """
        stop = stop or threading.Event()
        wake = self.batcher.client.pubsub(ignore_subscribe_messages=True)
        try:
            while not stop.is_set():
                try:
                    if not wake.subscribed:  # before reading state, so no wake is missed
                        wake.subscribe(self.batcher.keys.wake)
                    wait = self.run_once()
                    if wait >= 0.001:
                        wake.get_message(timeout=wait)
                except Exception:
                    log.exception("sweeper step failed; retrying in 1s")
                    stop.wait(1.0)
        finally:
            wake.close()
