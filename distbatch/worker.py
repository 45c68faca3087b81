"""Start an RQ worker (optionally with an embedded sweeper) on a namespace's queue.

The worker class is RQ's `SimpleWorker`: it runs jobs in its own process instead of forking a
work horse per job. A fork costs milliseconds per batch and would dominate small handlers; the
isolation it buys (a crashing job does not take the worker down) is replaced here by the batch
lease: a worker that dies, however it dies, stops renewing its lease and a sweeper hands the batch
to another worker. Scale out by starting more worker processes, on any machine.

Its door (`jobdoor`) runs nothing but distbatch's own ticket for its namespace.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from rq import Queue, SimpleWorker
from rq.job import Job

from . import jobdoor, jobs
from .batcher import Batcher
from .dispatch import make_queue
from .executor import Executor
from .handlers import HandlerResolver, registered
from .sweeper import Sweeper

log = logging.getLogger("distbatch.worker")


class BatchWorker(SimpleWorker):
    """An RQ SimpleWorker that refuses every job but distbatch's ticket, before RQ resolves it."""

    executor: Executor
    namespace: str

    def execute_job(self, job: Job, queue: Queue) -> None:
        reason = getattr(job, "refusal", None) or jobdoor.refusal(
            self.connection.hgetall(job.key), queue.name, self.namespace)
        if reason is not None:
            log.error("job_refused job=%s queue=%s: %s", job.id, queue.name, reason,
                      extra={"event": "job_refused", "job": job.id})
            jobdoor.refuse(self.connection, job, queue, reason)
            return
        super().execute_job(job, queue)

    def handle_warm_shutdown_request(self) -> None:
        self.executor.stop.set()  # finish the batch in hand, take no more
        super().handle_warm_shutdown_request()


def start_sweeper(batcher: Batcher, stop: threading.Event, **options: Any) -> threading.Thread:
    """An in-process sweeper thread with its own connections (it listens on the wake channel)."""
    own = Batcher(
        batcher.client.__class__(connection_pool=batcher.client.connection_pool),
        namespace=batcher.keys.namespace,
        clock=batcher.clock,
        queue_client=batcher.dispatcher.client if batcher.dispatcher else None,
    )
    sweeper = Sweeper(own, **options)
    thread = threading.Thread(target=sweeper.run, args=(stop,), name="distbatch-sweeper", daemon=True)
    thread.start()
    return thread


def run_worker(
    batcher: Batcher,
    *,
    handlers: Sequence[str] = (),
    lease_ms: int = 10_000,
    with_sweeper: bool = False,
    burst: bool = False,
    max_jobs: int | None = None,
    name: str | None = None,
    logging_level: str = "WARNING",
) -> bool:
    """Run until SIGTERM/SIGINT (warm: the batch in hand finishes), or until empty with burst."""
    resolver = HandlerResolver(handlers)
    if not resolver.allow_prefixes and not registered():
        log.warning("worker_allows_no_handler: this worker may run no handler at all (no --handlers "
                    "and none registered in-process); every batch it takes goes back untouched",
                    extra={"event": "worker_allows_no_handler"})
    queue_client = batcher.dispatcher.client if batcher.dispatcher else batcher.client
    executor = jobs.configure(Executor(batcher.records, resolver, lease_ms, batcher.dispatcher))
    stop = threading.Event()
    if with_sweeper:
        start_sweeper(batcher, stop)
    queue = make_queue(queue_client, batcher.keys)
    worker = BatchWorker([queue], connection=queue_client, name=name, serializer=queue.serializer,
                         job_class=jobdoor.ticket_job_class(queue.name, batcher.keys.namespace))
    worker.executor, worker.namespace = executor, batcher.keys.namespace
    log.info("worker_started namespace=%s queue=%s handlers=%s lease=%dms sweeper=%s",
                batcher.keys.namespace, queue.name, list(resolver.allow_prefixes) + registered(),
                lease_ms, with_sweeper, extra={"event": "worker_started"})
    try:
        return bool(worker.work(burst=burst, max_jobs=max_jobs, logging_level=logging_level))
    finally:
        stop.set()
