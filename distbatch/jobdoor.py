"""The worker's door: which RQ jobs it runs at all.

Anyone who can write to Redis can push a job onto a worker's queue, and a stock RQ worker imports
and calls whatever `func_name` the job names, plus its callbacks, dependents and webhooks. A
distbatch worker reads the raw job hash itself, before RQ resolves anything, and runs a job only
if it is exactly distbatch's own ticket for its own namespace; every other job is left failed in
RQ without running. Job data is JSON-decoded here (zlib, size-capped), never unpickled.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping
from typing import Any

import redis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.registry import FailedJobRegistry

from .errors import describe

JOB_FUNC = "distbatch.jobs.run_batches"
"""The one function a distbatch worker runs: its ticket (`distbatch.jobs`)."""


MAX_DATA = 64 * 1024
FAILED_TTL = 86_400
_EMPTY_OK = {b"success_callback_name", b"failure_callback_name", b"stopped_callback_name", b"group_id"}
_ALLOWED = _EMPTY_OK | {b"status", b"created_at", b"data", b"origin", b"description", b"enqueued_at",
                        b"timeout", b"result_ttl", b"failure_ttl",
                        # RQ's own bookkeeping of a ticket that started: RQ's registry maintenance
                        # fetches such a ticket back (its worker was killed) to fail it
                        b"started_at", b"ended_at", b"last_heartbeat", b"worker_name"}


def refusal(raw: Mapping[Any, Any], queue_name: str, namespace: str) -> str | None:
    """Why this job hash must not run, or None when it is distbatch's ticket for `namespace`."""
    extra = sorted(k.decode(errors="replace") for k in set(raw) - _ALLOWED)
    if extra:
        return f"job carries fields a distbatch ticket never has: {extra}"
    for name in _EMPTY_OK:
        if raw.get(name):
            return f"job sets {name.decode()}={raw[name][:80]!r}; distbatch tickets set none"
    if raw.get(b"timeout", b"-1") != b"-1":  # RQ would arm its alarm over the whole drain with it
        return f"job sets timeout={raw[b'timeout'][:40]!r}; distbatch tickets set -1 (none)"
    if raw.get(b"origin", b"").decode(errors="replace") != queue_name:
        return f"job origin {raw.get(b'origin')!r} is not this worker's queue {queue_name!r}"
    try:
        data = zlib.decompressobj().decompress(raw.get(b"data", b""), MAX_DATA)
        func, instance, args, kwargs = json.loads(data)
    except (zlib.error, ValueError, TypeError, RecursionError):  # nesting past the stack: a hostile writer's
        return "job data is not a JSON distbatch ticket (pickled, or malformed)"
    if func != JOB_FUNC or instance is not None or kwargs != {}:
        return f"job function {func!r:.100} is not {JOB_FUNC}"
    if args != [namespace]:
        return f"job args {args!r:.100} are not [{namespace!r}]"
    return None


def refuse(connection: redis.Redis, job: Job, queue: Queue, reason: str) -> None:
    """Leave the job failed in RQ (inspectable, expires after a day); nothing of it runs. A key
    that holds no hash is no job at all: it is deleted (RQ's maintenance would meet it again)."""
    if connection.type(job.key) not in (b"hash", b"none", "hash", "none"):
        pipe = connection.pipeline()
        pipe.delete(job.key)
        pipe.lrem(IntermediateQueue.get_intermediate_queue_key(queue.key), 0, job.id)
        pipe.execute()
        return
    pipe = connection.pipeline()
    pipe.hset(job.key, mapping={
        "status": "failed", "exc_info": zlib.compress(f"refused by distbatch worker: {reason}".encode())
    })
    pipe.expire(job.key, FAILED_TTL)
    pipe.zadd(FailedJobRegistry(queue.name, connection=connection).key, {job.id: time.time() + FAILED_TTL})
    pipe.lrem(IntermediateQueue.get_intermediate_queue_key(queue.key), 0, job.id)
    pipe.execute()


class TicketJob(Job):
    """A Job that vets its raw hash before RQ parses any of it.

    RQ's own `restore` decodes dependency lists, metadata and callbacks, and a malformed field
    crashes the worker's dequeue loop; a refused job is restored from its origin only, so nothing
    an attacker wrote is parsed, and `execute_job` refuses it.
    """

    queue_name = ""
    namespace = ""
    refusal: str | None = None

    def refresh(self) -> None:
        """RQ's reads the hash first: a job key of another type (a hostile writer's) raised
        WRONGTYPE out of the worker's dequeue loop, which quit (a burst worker exited 0, its
        batches undelivered). Such a job is refused like any other."""
        try:
            super().refresh()  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            self.refusal = f"its key {self.key} holds no job hash ({describe(exc)})"
            super().restore({b"data": b"", b"origin": self.queue_name.encode()})

    def restore(self, raw_data: Mapping[Any, Any]) -> None:
        self.refusal = refusal(raw_data, self.queue_name, self.namespace)
        if self.refusal is None:
            try:
                super().restore(raw_data)
                return
            except Exception as exc:  # a ticket's field that RQ cannot parse (a hostile writer's
                # `status`, `timeout` or timestamp) would crash the worker's loop at every start
                self.refusal = f"job field unreadable by RQ: {describe(exc)}"
        super().restore({b"data": b"", b"origin": raw_data.get(b"origin", b"")[:200]})


def ticket_job_class(queue_name: str, namespace: str) -> type[TicketJob]:
    return type("TicketJob", (TicketJob,), {"queue_name": queue_name, "namespace": namespace})
