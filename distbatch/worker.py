"""Start an RQ worker (optionally with an embedded sweeper) on a namespace's queue.

The worker class is RQ's `SimpleWorker`: it runs jobs in its own process instead of forking a
work horse per job. A fork costs milliseconds per batch and would dominate small handlers; the
isolation it buys (a crashing job does not take the worker down) is replaced here by the batch
lease: a worker that dies, however it dies, stops renewing its lease and a sweeper hands the batch
to another worker. Scale out by starting more worker processes, on any machine.

Its door (`jobdoor`) runs nothing but distbatch's own ticket for its namespace.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import FrameType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.utils import now as rq_now

try:
    from rq.exceptions import StopRequested
except ImportError:  # RQ 2.x
    from rq.worker import StopRequested  # type: ignore[no-redef,attr-defined]

from . import jobdoor, jobs
from .batcher import Batcher
from .dispatch import make_queue
from .errors import HandlerNotAllowed, describe
from .executor import LINGER_S, Executor
from .handlers import HandlerResolver, registered
from .interrupts import StopFlag
from .sweeper import Sweeper
from .transport import PASSING, refused_by_acl

log = logging.getLogger("distbatch.worker")


class _OneLine(logging.Filter):
    """RQ's loop logs a full traceback when Redis goes away under it; `run_worker` says it in
    one line and starts the loop again, so keep RQ's line and drop its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "unhandled exception, quitting" in str(record.msg):
            exc = record.exc_info[1]
            if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                record.exc_info = None
                record.msg = f"{record.msg} ({exc})"
        return True


STOP_SOCKET_TIMEOUT_S = 5.0
"""The longest a stopping worker waits on any one Redis call (see `BatchWorker._short_waits`)."""


class BatchWorker(SimpleWorker):
    """An RQ SimpleWorker that refuses every job but distbatch's ticket, before RQ resolves it."""

    executor: Executor
    namespace: str
    _in_job = False
    max_connection_wait_time = 2.0
    """RQ's dequeue, Redis away, retries after 1 s doubling up to this (RQ's own: 60 s): a worker
    sat idle for up to a minute after Redis came back, batches waiting."""

    _pubsub_failures = 0
    _pubsub_failed_at = 0.0
    on_birth: Callable[[], None] | None = None
    """Called once RQ registered this worker (`run_worker` logs `worker_started` then: logged
    before, it came ahead of `worker_name_taken`, and a worker that then took the freed name
    said nothing more, its last line "waiting")."""

    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[no-untyped-call]  # RQ ships no types for it
        if self.on_birth is not None:
            self.on_birth()

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        """RQ's pub/sub thread, Redis away, logged an error and retried every 2 s for the whole
        outage; here it says so once and backs off as the dequeue does (`run_worker` and the
        dequeue say the rest)."""
        if refused_by_acl(exc):  # no wait mends it; RQ's own handler ended with a traceback
            log.error("worker_pubsub_refused: %s; RQ's commands (`rq` shutdown, kill-horse) cannot "
                      "reach this worker: its ACL user needs the channels (&* +@pubsub: README, 'ACL "
                      "users')", describe(exc), extra={"event": "worker_pubsub_refused"})
            pubsub_thread.stop()
            return
        if not isinstance(exc, redis.ConnectionError):
            super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)
            return
        now = time.monotonic()
        if now - self._pubsub_failed_at > 10 * self.max_connection_wait_time:  # a new outage
            self._pubsub_failures = 0
        self._pubsub_failures += 1
        self._pubsub_failed_at = now
        pause = min(self.max_connection_wait_time, 0.5 * 2 ** min(self._pubsub_failures, 8))
        (log.warning if self._pubsub_failures == 1 else log.debug)(
            "worker_pubsub_unavailable: Redis away (%s); retrying every %.1fs at most", exc,
            self.max_connection_wait_time, extra={"event": "worker_pubsub_unavailable"})
        time.sleep(pause)

    def handle_payload(self, message: Any) -> None:
        """RQ's remote commands (`rq.command.send_shutdown_command` and the like), which anyone who
        can PUBLISH on this Redis may send: one stopped the worker with no word at all (RQ says
        so at INFO) and exit status 0; one that was no JSON killed the pub/sub thread with a
        traceback. Each is said now, and one that cannot be read is ignored."""
        data = message.get("data") if isinstance(message, dict) else None
        try:
            payload = json.loads(data) if isinstance(data, bytes | str) else None
            command = payload.get("command") if isinstance(payload, dict) else None
        except ValueError:
            command = None
        if not isinstance(command, str):
            log.warning("worker_command_ignored: a message on %s that is no RQ command: %r",
                        message.get("channel") if isinstance(message, dict) else "?", str(data)[:100],
                        extra={"event": "worker_command_ignored"})
            return
        log.warning("worker_command command=%s: sent on this worker's channel (RQ's send_command); "
                    "acting on it", command[:40], extra={"event": "worker_command", "command": command[:40]})
        super().handle_payload(message)  # type: ignore[no-untyped-call]

    def execute_job(self, job: Job, queue: Queue) -> None:
        self._in_job = True
        try:
            self._execute(job, queue)
        finally:
            self._in_job = False
            if self.executor.stop.is_set():  # stopped by a thread (the demo's signal watcher):
                self._stop_requested = True  # take no next job, as RQ's own warm shutdown does

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: RQ's warm shutdown, made safe wherever the signal lands. RQ's own
        wrote to Redis from the handler while a job ran (a Redis briefly away raised its error
        inside the user's handler), and raised StopRequested when its state said idle, which it
        says while a refused job's drain runs a handler (the handler failed, a try spent). Here:
        flags only while a job runs (the batch in hand finishes, no next job is taken); between
        jobs StopRequested, to leave RQ's blocking dequeue."""
        self._shutdown_requested_date = rq_now()  # RQ's cold shutdown (a second signal) reads it
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self.handle_warm_shutdown_request()
        self._stop_requested = True
        if not self._in_job:
            raise StopRequested()

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """A second signal (a second or more after the first): exit now, as the sweeper does, with
        128 + the signal's number. RQ's raised SystemExit inside the running handler, which RQ's
        own job runner caught: a traceback in the user's handler, then exit status 0, as if the
        batch in hand had finished. It comes back when its lease runs out."""
        if (rq_now() - self._shutdown_requested_date) < timedelta(seconds=1):  # type: ignore[operator]
            return  # RQ's rule: the same stop sent twice (a pool and the terminal)
        print("\nsecond signal: the worker exits now; the batch in hand comes back when its lease "
              "runs out", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def teardown(self) -> None:
        """RQ's, minus its failure mode: with Redis away, `register_death` raised before the
        pub/sub thread was stopped, and every restart of the loop left one behind, retrying."""
        reachable = True
        try:
            self.register_death()  # type: ignore[no-untyped-call]
        except (redis.RedisError, OSError) as exc:
            reachable = False
            log.debug("register_death failed: %s", describe(exc))
        finally:
            thread, self.pubsub_thread = getattr(self, "pubsub_thread", None), None
            if thread is not None:
                if reachable:  # as RQ does: the UNSUBSCRIBE's reply wakes the thread's read
                    with contextlib.suppress(redis.RedisError, OSError):
                        self.pubsub.unsubscribe()  # type: ignore[union-attr]
                thread.stop()  # with Redis away, it ends after its retry pause (2 s)
                thread.join(timeout=1)
                if not thread.is_alive():  # closed under a read, the thread fails loudly
                    with contextlib.suppress(Exception):
                        self.pubsub.close()  # type: ignore[union-attr]

    def _execute(self, job: Job, queue: Queue) -> None:
        reason = getattr(job, "refusal", None) or jobdoor.refusal(
            self.connection.hgetall(job.key), queue.name, self.namespace)
        if reason is not None:
            log.error("job_refused job=%s queue=%s: %s", job.id, queue.name, reason,
                      extra={"event": "job_refused", "job": job.id})
            jobdoor.refuse(self.connection, job, queue, reason)
            # The job woke this worker in place of a ticket: the producers' hand-off counts what
            # waits in the queue, so a planted job may stand where a ticket would have gone. Run
            # what is ready now (no lingering: a flood of planted jobs must cost little each).
            try:
                self.executor.drain(jobs.MAX_BATCHES_PER_JOB, jobs.MAX_SECONDS_PER_JOB, linger_s=0.0)
            except Exception as exc:  # as a ticket's failure: logged, the loop goes on
                log.warning("drain_failed after a refused job: %s", describe(exc),
                            extra={"event": "drain_failed"})
            return
        super().execute_job(job, queue)

    def handle_warm_shutdown_request(self) -> None:
        if not self.executor.stop.is_set():  # the first signal: said once (RQ's line is INFO on its logger)
            log.info("worker_stopping: the batch in hand finishes, no next is taken (a second signal "
                     "exits at once)", extra={"event": "worker_stopping"})
        self.executor.stop.set()  # finish the batch in hand, take no more
        self._short_waits()
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]

    stop_socket_timeout: float = STOP_SOCKET_TIMEOUT_S

    def _short_waits(self) -> None:
        """Once a stop is asked no blocking dequeue is left to wait for, but RQ set its pool's
        socket timeout to 415 s for one: its bookkeeping after the batch in hand (a heartbeat, the
        job's end) and `register_death` then waited that long each on a Redis that hangs, past
        any orchestrator's grace (SIGKILL at 60 s under compose). Its connections, the idle and
        the in-use ones, get the batcher's own timeout back; not the pub/sub thread's, whose
        reads wait for messages (it is stopped in `teardown`). No batch depends on these calls:
        an unfinished one comes back when its lease runs out."""
        pool = self.connection.connection_pool
        timeout = self.stop_socket_timeout
        once = Retry(NoBackoff(), 0)  # redis-py 6 tries a timed-out call 3 more times, with backoff
        pool.connection_kwargs.update(socket_timeout=timeout, retry=once)
        listening = getattr(getattr(self, "pubsub", None), "connection", None)
        for conn in [*getattr(pool, "_available_connections", ()), *getattr(pool, "_in_use_connections", ())]:
            if conn is listening:
                continue
            conn.socket_timeout, conn.retry = timeout, once
            sock = getattr(conn, "_sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.settimeout(timeout)

    @property
    def stopping(self) -> bool:
        """Whether SIGINT/SIGTERM asked this worker to stop. RQ's `_stop_requested` alone says so
        only for a signal that came while a job ran; one that came between jobs ends `work()` by a
        StopRequested RQ swallows, and only the warm-shutdown hook (the executor's stop) saw it."""
        return self._stop_requested or self.executor.stop.is_set()


def start_sweeper(batcher: Batcher, stop: threading.Event,
                  refused: Callable[[BaseException], None] | None = None, **options: Any) -> threading.Thread:
    """An in-process sweeper thread with its own connections (it listens on the wake channel).
    `refused` is told of a login or ACL refusal that ended it (`refused_by_acl`)."""
    own = Batcher(
        batcher.client.__class__(connection_pool=batcher.client.connection_pool),
        namespace=batcher.keys.namespace,
        clock=batcher.clock,
        queue_client=batcher.dispatcher.client if batcher.dispatcher else None,
    )
    sweeper = Sweeper(own, **options)

    def run() -> None:
        try:
            sweeper.run(stop)
        except Exception as exc:
            if refused is None or not refused_by_acl(exc):
                raise
            refused(exc)

    thread = threading.Thread(target=run, name="distbatch-sweeper", daemon=True)
    thread.start()
    return thread


def configure(batcher: Batcher, resolver: HandlerResolver, lease_ms: int = 10_000,
              linger_s: float = LINGER_S, stop: StopFlag | None = None) -> Executor:
    """The executor the ticket job uses in this process."""
    return jobs.configure(Executor(batcher.records, resolver, lease_ms, batcher.dispatcher, linger_s,
                                   stop, stop_on_refusal=True))


def make_worker(batcher: Batcher, executor: Executor, name: str | None = None) -> BatchWorker:
    queue_client = _own_pool(batcher.dispatcher.client if batcher.dispatcher else batcher.client)
    pool = getattr(queue_client, "connection_pool", None)
    own_timeout = pool.connection_kwargs.get("socket_timeout") if pool is not None else None
    queue = make_queue(queue_client, batcher.keys)
    worker = BatchWorker([queue], connection=queue_client, name=name, serializer=queue.serializer,
                         job_class=queue.job_class)
    worker.executor, worker.namespace = executor, batcher.keys.namespace
    if isinstance(own_timeout, int | float) and 0 < own_timeout < STOP_SOCKET_TIMEOUT_S:
        worker.stop_socket_timeout = float(own_timeout)
    return worker


def _name_holder(worker: BatchWorker | None) -> str | None:
    """Who holds the RQ registration `worker` could not take: None when it is this process's own
    or its process is gone (same host, no such pid: a restarted container), else "pid P on H".
    Another host's holder cannot be checked; RQ's registration expires with its heartbeat."""
    if worker is None:
        return None
    try:
        pid, host = worker.connection.hmget(worker.key, ["pid", "hostname"])
    except redis.RedisError:
        return None
    if pid is None or host is None or not pid.isdigit():
        return None
    number, where = int(pid), host.decode(errors="replace") if isinstance(host, bytes) else str(host)
    if where == socket.gethostname():
        if number == os.getpid():
            return None
        try:
            os.kill(number, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return f"pid {number} on {where}"


def _own_pool(client: redis.Redis) -> redis.Redis:
    """A client on a pool of its own for RQ's worker: RQ raises the socket timeout of the pool it
    is given to 415 s (its blocking dequeue needs it), and on the batcher's own pool every lease
    renewal, heartbeat and sweep would then wait 415 s on a Redis that hangs."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return client
    return redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=pool.max_connections,
        **dict(pool.connection_kwargs)))


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
    summary_every_s: float = 60.0,
) -> bool:
    """Run until SIGTERM/SIGINT (warm: the batch in hand finishes), or until empty with burst.

    Redis down at start, or restarted under the worker: one line per failure and a retry with
    backoff, never an exit (RQ's own loop quits on such errors; this starts it again).
    """
    resolver = HandlerResolver(handlers)
    if not resolver.allow_prefixes and not registered():
        log.warning("worker_allows_no_handler: this worker may run no handler at all (no --handlers "
                    "and none registered in-process); every batch it takes goes back untouched",
                    extra={"event": "worker_allows_no_handler"})
    for prefix, why in resolver.unfound().items():
        log.warning("handlers_not_found prefix=%s: %s; batches of its handlers go back untouched",
                    prefix, why, extra={"event": "handlers_not_found", "prefix": prefix})
    _say_unrunnable(batcher, resolver)
    queue_client = batcher.dispatcher.client if batcher.dispatcher else batcher.client
    executor = configure(batcher, resolver, lease_ms, 0.02 if burst else LINGER_S)  # burst: done is done
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():  # until RQ's loop installs its own
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, functools.partial(_stop_at_start, executor))
    helpers: list[threading.Thread] = []  # joined on the way out: each removes its own entry
    worked = False
    refusals: list[BaseException] = []

    def sweeper_refused(exc: BaseException) -> None:
        """Its sweeper cannot work as this URL's user: a mistake, raised once the worker stopped
        (warm, as on SIGTERM), instead of a worker that goes on without its sweeper in silence."""
        log.error("sweeper_refused: %s; the worker stops (--with-sweeper needs a sweeper's "
                  "permissions)", describe(exc), extra={"event": "sweeper_refused"})
        refusals.append(exc)
        executor.stop.set()
        if on_main_thread:  # RQ's loop waits on its queue: its signal handler stops it
            os.kill(os.getpid(), signal.SIGTERM)

    on_main_thread = threading.current_thread() is threading.main_thread()
    try:
        if with_sweeper:
            helpers.append(start_sweeper(batcher, stop, sweeper_refused))
        queue = make_queue(queue_client, batcher.keys)
        started: list[bool] = []

        def announce() -> None:  # once, the first time RQ registered the worker (not at restarts)
            if not started:
                started.append(True)
                log.info("worker_started namespace=%s queue=%s handlers=%s lease=%dms sweeper=%s",
                         batcher.keys.namespace, queue.name, list(resolver.allow_prefixes) + registered(),
                         lease_ms, with_sweeper, extra={"event": "worker_started"})
        if summary_every_s > 0:
            threading.Thread(target=_summaries, args=(executor, summary_every_s, stop), daemon=True,
                             name="distbatch-summary").start()
        worker_id = name or f"{socket.gethostname()}.{os.getpid()}"
        beating = threading.Thread(target=_heartbeats, args=(batcher, worker_id, stop), daemon=True,
                                   name="distbatch-heartbeat")
        beating.start()
        helpers.append(beating)
        rq_log = logging.getLogger("rq.worker")
        if not any(isinstance(f, _OneLine) for f in rq_log.filters):
            rq_log.addFilter(_OneLine())
        # Everything made so far (modules, the registry, the handlers) lives as long as the worker:
        # out of the collector's way, a full collection while batches stream in scans only what
        # batches made (on this machine 14 ms became ~1 ms; such a pause is a tail of cut -> start).
        # Undone on return, so a process that runs workers in turn still collects what they left.
        gc.collect()
        gc.freeze()
        backoff = 0.0
        previous: BatchWorker | None = None
        while True:
            if previous is not None:  # RQ's start-up failed after it registered or subscribed
                with contextlib.suppress(Exception):  # (RQ tears down only once its loop runs)
                    previous.teardown()
            try:
                worker = previous = make_worker(batcher, executor, name)
                worker.on_birth = announce
                worked = bool(worker.work(burst=burst, max_jobs=max_jobs, logging_level=logging_level))
                if burst and not executor.stop.is_set():
                    worked = _drain_unannounced(executor, worker) or worked
                backoff = 0.0
            except (redis.AuthenticationError, redis.exceptions.AuthorizationError):
                raise  # a wrong password is a mistake to report, not an outage to wait out
            except PASSING as exc:  # RQ's own writes refused too (out of memory, read-only)
                backoff = min(10.0, max(0.5, backoff * 2))
                log.warning("worker_redis_unavailable: %s; retrying in %.1fs", describe(exc), backoff,
                            extra={"event": "worker_redis_unavailable"})
            except ValueError as exc:  # the name is registered: ours, left while Redis was down?
                if "active worker named" not in str(exc):
                    raise
                backoff = min(10.0, max(0.5, backoff * 2))
                holder = _name_holder(previous)
                if holder is None:
                    log.warning("worker_name_busy: %s; retrying in %.1fs", exc, backoff)
                else:  # another live worker's: tearing it down would take its place in RQ
                    previous = None
                    log.warning("worker_name_taken: a live worker named %r holds the name (%s); "
                                "waiting for it to stop, retrying in %.1fs (give each worker its "
                                "own --name, or none)", name, holder, backoff,
                                extra={"event": "worker_name_taken"})
            else:
                if burst or max_jobs is not None or worker.stopping:
                    return worked
                backoff = min(10.0, max(0.5, backoff * 2))
                log.warning("worker_restarting: RQ's loop quit (Redis restarted or timed out); "
                            "starting it again in %.1fs", backoff, extra={"event": "worker_restarting"})
            if executor.stop.wait(backoff):
                return worked
    except StopRequested:  # a signal between two runs of RQ's loop (its handler stays installed)
        return worked
    finally:
        stop.set()
        # a clean stop takes its heartbeat and its sweeper's lease with it (left behind, /healthz
        # counted a stopped worker for a minute); bounded, should Redis not answer
        deadline = time.monotonic() + 3
        for thread in helpers:
            if thread.ident is not None:  # a stop signal can land between a thread's making and
                thread.join(max(0.0, deadline - time.monotonic()))  # its start: never started
        gc.unfreeze()
        mistake = refusals[0] if refusals else executor.mistake
        if mistake is not None and sys.exc_info()[1] is None:
            raise mistake


SAY_UNRUNNABLE = 10
"""Bindings named, at most, in each of the start-up lines on what a worker cannot run."""


def _say_unrunnable(batcher: Batcher, resolver: HandlerResolver) -> None:
    """The registered bindings whose handler this worker cannot run, said as it starts: a
    module `register` could not import is left to the workers (the handlers live with them),
    and one they cannot import either (a typo in the module's name) was said only once a batch
    came, then every 5 s, its batches never run nor dead: a warning, with why. Those outside
    its --handlers (another pool's, or a worker started with too narrow a list) are named at
    info. One line each, naming at most `SAY_UNRUNNABLE` (a namespace of 200 bindings of
    another pool wrote 200 lines at every start: the diff review). Redis away at start: the
    worker's own loop says so."""
    try:
        bindings = batcher.bindings()
    except Exception:  # away, or a look the ACL refuses: the loop below reports what matters
        return
    broken: list[str] = []
    elsewhere: list[str] = []
    for key, binding in sorted(bindings.items()):
        if not resolver.allowed(binding.handler):
            elsewhere.append(key)
            continue
        try:
            resolver.resolve(binding.handler)
        except HandlerNotAllowed as exc:
            broken.append(f"{key} ({exc})")

    def named(items: list[str]) -> str:
        more = len(items) - SAY_UNRUNNABLE
        return "; ".join(items[:SAY_UNRUNNABLE]) + (f"; and {more} more" if more > 0 else "")

    if broken:
        log.warning("handler_unavailable bindings=%d: %s; their batches wait for a worker that can run "
                    "them", len(broken), named(broken), extra={"event": "handler_unavailable"})
    if elsewhere:
        log.info("handlers_elsewhere bindings=%d: %s; outside this worker's --handlers %s: their "
                 "batches are left to workers that allow them", len(elsewhere), named(elsewhere),
                 list(resolver.allow_prefixes), extra={"event": "handlers_elsewhere"})


def _drain_unannounced(executor: Executor, worker: BatchWorker) -> bool:
    """A burst worker's last look, in distbatch's own keys: batches ready with no ticket queued
    (cut by an app with hand-off off, or whose producer died before its hand-off and no sweeper
    has noticed yet). RQ's burst loop ends once its queue is empty: such a worker exited at once,
    running none of them and saying nothing. Run as a job is (`_in_job`), so a SIGTERM meanwhile
    is a warm stop: it raised StopRequested inside the running handler, failing its batch."""
    if executor.refused:  # a key of the wrong type refused the drains of RQ's loop: said there
        return False
    worker._in_job = True
    try:
        counts = jobs.drain_reported(executor, worker.namespace, sys.maxsize, math.inf, linger_s=0.0)
    finally:
        worker._in_job = False
    counts = {k: v for k, v in counts.items() if k not in ("interrupted", "refused")}
    if counts:
        log.info("burst_drained %s: batches that were ready with no ticket queued",
                 " ".join(f"{k}={v}" for k, v in sorted(counts.items())),
                 extra={"event": "burst_drained"})
    return bool(counts)


def _stop_at_start(executor: Executor, signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT before RQ's loop runs (Redis slow to answer at start): a clean stop (its
    heartbeat and sweeper's entries removed), not the default death by the signal."""
    executor.stop.set()
    raise StopRequested()


HEARTBEAT_S = 5.0


def _heartbeats(batcher: Batcher, worker_id: str, stop: threading.Event) -> None:
    """The worker's heartbeat in the namespace (`Keys.workers`, what `/healthz` counts); entries
    silent for ten minutes go. Best effort: Redis away costs a missed beat, not the worker."""
    key = batcher.keys.workers
    try:
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                batcher.client.hsetnx(*batcher.layout.store().args)  # Redis lost it: first, as it was
                now = batcher.server_ms()
                batcher.client.zadd(key, {worker_id: now})
                batcher.client.zremrangebyscore(key, "-inf", now - 600_000)
            if stop.wait(HEARTBEAT_S):
                return
    finally:
        with contextlib.suppress(redis.RedisError, OSError):
            batcher.client.zrem(key, worker_id)


def _summaries(executor: Executor, every_s: float, stop: threading.Event) -> None:
    last: dict[str, int] = {}
    while not stop.wait(every_s):
        now = dict(executor.counts)
        delta = {k: v - last.get(k, 0) for k, v in now.items() if v - last.get(k, 0)}
        last = now
        log.info("worker_summary last %.0fs: %s", every_s,
                 " ".join(f"{k}={v}" for k, v in sorted(delta.items())) or "idle",
                 extra={"event": "worker_summary", **{f"n_{k}": v for k, v in delta.items()}})
