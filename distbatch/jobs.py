"""The one RQ job function: a ticket to run the ready batches of a namespace.

Workers configure it at start; it never imports a path from Redis that the worker did not allow.
"""

from __future__ import annotations

import logging
import os
import threading

import redis

from .dispatch import Dispatcher
from .errors import describe
from .executor import Executor
from .handlers import HandlerResolver
from .keys import Keys
from .records import Records
from .shards import Layout
from .transport import OUTAGE, refused_by_acl

log = logging.getLogger("distbatch.worker")

_lock = threading.Lock()
_executors: dict[str, Executor] = {}

MAX_BATCHES_PER_JOB = 10_000
MAX_SECONDS_PER_JOB = 10.0
REFUSED_PAUSE_S = 5.0
"""How long a worker whose drain Redis refused (a key of the wrong type) waits before its next."""
"""A ticket's budget. Between two tickets RQ's bookkeeping (~27 round trips) stalls the worker
while batches keep coming, and that stall is what the tail of cut -> start is made of under a
steady stream; 10 s amortises it. Other workers join through the tickets a drain leaves when
batches wait, and a warm shutdown ends a drain after the batches in hand (about 10 ms of
handler time, at most 50 ms), so a long budget starves no one."""


def configure(executor: Executor) -> Executor:
    """Called by `distbatch worker` before it starts taking jobs."""
    with _lock:
        _executors[executor.records.keys.namespace] = executor
    return executor


def _executor(namespace: str) -> Executor:
    with _lock:
        if namespace in _executors:
            return _executors[namespace]
        # A plain `rq worker` (not `distbatch worker`): its connection, and only the handlers
        # DISTBATCH_HANDLERS allows, so nothing is importable unless someone allowed it.
        from rq import get_current_job

        job = get_current_job()
        if job is None:
            raise RuntimeError("distbatch job run outside a worker")
        client: redis.Redis = job.connection
        keys = Keys(namespace)
        executor = Executor(Records(client, Layout.load(client, namespace, None)),
                            HandlerResolver(os.environ.get("DISTBATCH_HANDLERS", "").split(",")),
                            dispatcher=Dispatcher(client, keys))
        _executors[namespace] = executor
        return executor


def run_batches(namespace: str) -> dict[str, int]:
    """RQ entry point: run ready batches of `namespace`; returns how many ended how. Redis (or a
    cluster's node) away mid-drain ends the ticket with one line, not a failed job and RQ's
    traceback: the batches not started were given back, the others come back when their leases
    run out, and a sweeper hands them off again."""
    return drain_reported(_executor(namespace), namespace, MAX_BATCHES_PER_JOB, MAX_SECONDS_PER_JOB)


def drain_reported(executor: Executor, namespace: str, max_batches: int, max_seconds: float,
                   linger_s: float | None = None) -> dict[str, int]:
    """`executor.drain`, a failure said in one line (`run_batches`)."""
    try:
        counts = executor.drain(max_batches, max_seconds, linger_s)
        executor.refused = False
        return counts
    except OUTAGE as exc:
        log.warning("drain_interrupted namespace=%s: %s; the batches in hand come back to be run",
                    namespace, describe(exc), extra={"event": "drain_interrupted"})
        return {"interrupted": 1}
    except redis.ResponseError as exc:  # a key of the wrong type: no step of the drain can go on
        executor.refused = True  # no ticket for other workers from it until a drain goes through
        if refused_by_acl(exc):  # the URL's user lacks a command or a key: no wait mends it, and
            # a worker that went on took every ticket (and counted in /healthz) running nothing
            if executor.stop_on_refusal:  # `distbatch worker`: it ends, raising it
                log.error("drain_refused_by_acl namespace=%s: %s; the worker stops", namespace,
                          describe(exc), extra={"event": "drain_refused_by_acl"})
                executor.mistake = exc
                executor.stop.set()  # no next job: RQ's loop ends, and the worker raises it
                return {"refused": 1}
            log.error("drain_refused_by_acl namespace=%s: %s; give the worker's user the permissions "
                      "(README, ACL users); this rq worker takes its next ticket in %.0fs", namespace,
                      describe(exc), REFUSED_PAUSE_S, extra={"event": "drain_refused_by_acl"})
            executor.stop.wait(REFUSED_PAUSE_S)  # a plain `rq worker`, which distbatch does not end
            return {"refused": 1}
        log.error("drain_refused namespace=%s: Redis refused a step (%s)%s; this worker takes its next "
                  "ticket in %.0fs", namespace, describe(exc), executor.records.misfiled_hint(exc),
                  REFUSED_PAUSE_S, extra={"event": "drain_refused"})
        executor.stop.wait(REFUSED_PAUSE_S)  # each ticket failed at once, and a new one was queued
        return {"refused": 1}  # at its start: a hot loop of tracebacks and failed jobs kept a day
