"""Start an RQ worker (optionally with an embedded sweeper) on a namespace's queue.

The worker class is RQ's `SimpleWorker`: it runs jobs in its own process instead of forking a
work horse per job. A fork costs milliseconds per batch and would dominate small handlers; the
isolation it buys (a crashing job does not take the worker down) is replaced here by the batch
lease: a worker that dies, however it dies, stops renewing its lease and a sweeper hands the batch
to another worker. Scale out by starting more worker processes, on any machine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from rq import SimpleWorker

from . import jobs
from .batcher import Batcher
from .dispatch import Dispatcher, make_queue
from .handlers import HandlerResolver
from .sweeper import Sweeper

log = logging.getLogger("distbatch.worker")


def start_sweeper(batcher: Batcher, stop: threading.Event, **options: float) -> threading.Thread:
    """An in-process sweeper thread with its own connections (it listens on the wake channel)."""
    own = Batcher(
        batcher.client.__class__(connection_pool=batcher.client.connection_pool),
        namespace=batcher.keys.namespace,
        clock=batcher.clock,
    )
    sweeper = Sweeper(own, Dispatcher(own), **options)  # type: ignore[arg-type]
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
    jobs.configure(batcher, HandlerResolver(handlers), lease_ms)
    stop = threading.Event()
    if with_sweeper:
        start_sweeper(batcher, stop)
    worker = SimpleWorker(
        [make_queue(batcher)], connection=batcher.client, name=name,
        serializer=make_queue(batcher).serializer,
    )
    try:
        return worker.work(burst=burst, max_jobs=max_jobs, logging_level=logging_level)
    finally:
        stop.set()
