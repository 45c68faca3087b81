"""Hand-off to RQ: make sure workers come for ready batches.

An RQ job does not carry a batch. It is a ticket that tells one worker "batches are ready in this
namespace"; the worker then claims ready batches from distbatch's own keys, oldest first, until
none is left or its per-job budget is spent (see `jobs.run_batches`). So:

- hand-off state lives in distbatch's keys: a job lost with its worker (killed after dequeue)
  loses no batch, and nothing ever has to look inside RQ's queue (no O(backlog) scans);
- RQ's ~27 round trips of job bookkeeping are paid per ticket, not per batch;
- a retried or reclaimed batch goes back to the front (lowest id first), not behind a backlog
  of queued jobs;
- tickets are capped: a cut enqueues one only while fewer than `max_queued_jobs` wait, and every
  ticket gets a fresh RQ job id.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from .errors import describe
from .jobdoor import JOB_FUNC, ticket_job_class
from .keys import Keys
from .metrics import HANDOFF_TICKETS

log = logging.getLogger("distbatch")

OnCut = Callable[[Sequence[str]], object]
"""Called with the ids of batches just cut (empty when a cut may have happened but its ids were
lost with a reply); the default hands them to the workers (`Dispatcher`)."""


def hand_off(on_cut: OnCut | None, batch_ids: Sequence[str], queued: int = -1) -> None:
    """Call the hook; never raise: the batches are safe in Redis and a sweeper hands them off.
    `queued`: tickets waiting, when the emit script already looked (-1: the dispatcher looks)."""
    if on_cut is None:
        return
    try:
        if isinstance(on_cut, Dispatcher):
            on_cut.ensure(max(1, len(batch_ids)), queued)
        else:
            on_cut(batch_ids)
    except QueueAway as exc:  # said once, when it went away
        log.debug("handoff_skipped batches=%d: %s", len(batch_ids), exc)
    except Exception as exc:
        log.warning("handoff_failed batches=%d: %s; a sweeper will hand them off", len(batch_ids),
                    describe(exc), extra={"event": "handoff_failed"})


class QueueAway(redis.ConnectionError):
    """A hand-off not tried: the ticket queue's Redis failed the last one and has not answered
    since (`Dispatcher`)."""


def make_queue(client: redis.Redis, keys: Keys) -> Queue:
    """The namespace's ticket queue. Its job class is the door's (`jobdoor.TicketJob`): RQ's
    registry maintenance (at a worker's start, then every 10 minutes) fetches jobs with the queue's
    job class and runs the failure callback of one abandoned while started, so with RQ's plain
    `Job` a job planted in Redis had a worker import and call anything."""
    return Queue(keys.queue_name, connection=client, serializer=JSONSerializer,
                 job_class=ticket_job_class(keys.queue_name, keys.namespace))


PROBE_FIRST_S = 0.5
PROBE_MAX_S = 5.0


class Dispatcher:
    """Enqueues drain tickets for a namespace. `Batcher` calls it after every cut (its `on_cut`
    hook); sweepers call it while ready batches wait and no ticket does."""

    def __init__(self, queue_client: redis.Redis, keys: Keys, *, max_queued_jobs: int = 2) -> None:
        self.client = queue_client
        self.keys = keys
        self.queue = make_queue(queue_client, keys)
        self.max_queued_jobs = max_queued_jobs
        self._away_since: float | None = None  # monotonic: the last hand-off failed then
        self._away_pid = 0  # the process whose probe ends the pause (a forked child has none)
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop the probe of a queue that is away (it holds a thread and a connection)."""
        self._closed.set()

    @staticmethod
    def _check_back(ref: weakref.ref[Dispatcher], closed: threading.Event) -> None:
        """While the queue's Redis is away (or hangs), hand-offs are not tried: each would wait
        out the socket timeout (5 s), holding up the emit that cut, or the sweep and every window
        due behind it. The batches are safe in Redis; a sweeper hands them off once the queue is
        back. This thread asks it, with backoff, and lets hand-offs through once it answers; it
        ends without a word once its dispatcher is closed or gone (its Batcher dropped): a mistyped
        queue URL kept a thread and a connection per Batcher for good."""
        pause = PROBE_FIRST_S
        while True:
            if closed.wait(pause):
                return
            dispatcher = ref()
            if dispatcher is None:
                return
            try:
                dispatcher.client.ping()
                break
            except Exception:
                pause = min(PROBE_MAX_S, pause * 2)
            del dispatcher  # held only while asking: a dropped Batcher lets it go
        with dispatcher._lock:
            away, dispatcher._away_since = dispatcher._away_since, None
        log.warning("handoff_resumed namespace=%s: the ticket queue answers again (away %.1fs)",
                    dispatcher.keys.namespace, time.monotonic() - (away or time.monotonic()),
                    extra={"event": "handoff_resumed"})

    def _went_away(self, exc: Exception) -> None:
        with self._lock:
            if self._away_since is not None and self._away_pid == os.getpid():
                return
            self._away_since, self._away_pid = time.monotonic(), os.getpid()
        log.warning("handoff_paused namespace=%s: the ticket queue failed (%s); hand-offs wait "
                    "until it answers, a sweeper hands the batches off then", self.keys.namespace,
                    describe(exc), extra={"event": "handoff_paused"})
        threading.Thread(target=self._check_back, args=(weakref.ref(self), self._closed), daemon=True,
                         name="distbatch-queue-probe").start()

    def __call__(self, batch_ids: Sequence[str] = ()) -> int:
        """Hand off newly ready batches (ids, or none when unknown): returns tickets enqueued."""
        return self.ensure(max(1, len(batch_ids)))

    def queued(self) -> int:
        return int(self.client.llen(self.queue.key))

    def wanted(self, ready: int, queued: int) -> bool:
        """Known without asking Redis that no ticket is needed (`queued` >= 0: how many wait)?"""
        return queued < 0 or min(ready, self.max_queued_jobs) > queued

    def ensure(self, ready: int, queued: int = -1) -> int:
        """Enqueue tickets until min(ready, max_queued_jobs) wait in the queue (`queued`: how many
        wait now, when the caller knows; else one LLEN asks). `QueueAway` while the queue's
        Redis is away (`_check_back`)."""
        away = self._away_since
        if away is not None and self._away_pid == os.getpid():  # a forked child tries for itself
            raise QueueAway(f"the ticket queue failed {time.monotonic() - away:.1f}s ago and has not "
                            "answered since")
        try:
            want = min(ready, self.max_queued_jobs) - (self.queued() if queued < 0 else queued)
            if want <= 0:
                return 0
            ns = self.keys.namespace
            self.queue.enqueue_many([
                Queue.prepare_data(JOB_FUNC, args=(ns,), timeout=-1, result_ttl=0, failure_ttl=86_400,
                                   description=f"distbatch: run ready batches of {ns}")
                for _ in range(want)
            ])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._went_away(exc)
            raise
        HANDOFF_TICKETS.inc(want)
        return want
