"""The worker's door: only distbatch's own ticket runs; an attacker with write access to Redis
cannot make a worker import, call or unpickle anything."""

from __future__ import annotations

import logging
import os
import pickle
import zlib
from pathlib import Path

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from distbatch import Batch, Batcher
from distbatch.dispatch import JOB_FUNC
from distbatch.worker import run_worker

from .redis_server import RedisServer

delivered: list[Batch] = []
called: list[str] = []


def record(batch: Batch) -> None:
    delivered.append(batch)


def evil_callback(*args: object) -> None:
    called.append("callback")


class Boom:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.path}",))


@pytest.fixture
def setup(redis_server: RedisServer, namespace: str, tmp_path: Path):
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace)
    b.register("d", version="v1", source="s", handler=f"{__name__}.record",
               batch={"count": 1, "window": "1h"})
    delivered.clear()
    called.clear()
    return client, b, Queue(b.keys.queue_name, connection=client, serializer=JSONSerializer), tmp_path


def assert_refused(client: redis.Redis, queue: Queue, job_id: str) -> None:
    key = Job.key_for(job_id)  # read raw: RQ's own fetch would choke on the malformed ones
    assert client.hget(key, "status") == JobStatus.FAILED.value.encode()
    assert job_id in FailedJobRegistry(queue.name, connection=client).get_job_ids()
    assert b"refused by distbatch worker" in zlib.decompress(client.hget(key, "exc_info"))


def test_attacker_jobs_never_run_and_the_ticket_still_does(setup, caplog: pytest.LogCaptureFixture) -> None:
    client, b, queue, tmp = setup
    marker = tmp / "pwned"
    b.emit("s", {"n": 1})  # cuts a batch: its ticket waits in the queue among the attacks
    attacks = [
        queue.enqueue("subprocess.check_call", ["touch", str(marker)]),
        queue.enqueue("os.system", f"touch {marker}"),
        queue.enqueue(JOB_FUNC, b.keys.namespace, on_success=Callback(f"{__name__}.evil_callback")),
        queue.enqueue(JOB_FUNC, b.keys.namespace, on_failure=Callback(f"{__name__}.evil_callback")),
        queue.enqueue(JOB_FUNC, "another-namespace"),
    ]
    dep = queue.enqueue(JOB_FUNC, b.keys.namespace)  # a ticket made to look like it has dependencies
    client.hset(dep.key, "dependency_ids", "x")
    pickled = Queue(b.keys.queue_name, connection=client).enqueue(  # RQ's default: pickle
        "builtins.print", Boom(str(tmp / "unpickled")))
    with caplog.at_level(logging.ERROR, "distbatch.worker"):
        run_worker(Batcher(client, namespace=b.keys.namespace), handlers=[__name__], burst=True)
    assert not marker.exists() and not (tmp / "unpickled").exists() and called == []
    for job in [*attacks, dep, pickled]:
        assert_refused(client, queue, job.id)
    assert sum("job_refused" in m for m in caplog.messages) == len(attacks) + 2
    assert [e.payload for batch in delivered for e in batch.events] == [{"n": 1}]


@pytest.mark.parametrize("field,value", [
    ("timeout", "abc"), ("timeout", "1"),  # "1": RQ's alarm over the drain, interrupting handlers
    ("status", "bogus"), ("created_at", "garbage"), ("result_ttl", "x"), ("enqueued_at", "1")])
def test_a_ticket_with_a_field_rq_cannot_parse_is_refused_and_the_worker_goes_on(
        setup, field: str, value: str) -> None:
    """A ticket-shaped job whose allowed field a hostile writer garbled passed the door, then RQ's
    own parsing raised in the worker's dequeue loop: the loop quit at every start (and again in
    its maintenance), and no batch was delivered."""
    client, b, queue, _ = setup
    job = queue.enqueue(JOB_FUNC, b.keys.namespace)
    client.hset(job.key, field, value)
    b.emit("s", {"n": 1})  # the real ticket, behind it
    run_worker(Batcher(client, namespace=b.keys.namespace), handlers=[__name__], burst=True)
    assert_refused(client, queue, job.id)
    assert [e.payload for batch in delivered for e in batch.events] == [{"n": 1}]


def test_a_ticket_nested_past_the_stack_is_refused_and_the_worker_goes_on(setup) -> None:
    """Data nested 60,000 deep raised RecursionError out of the door: the worker's loop quit at
    every start and at each of RQ's cleanups, the job never refused."""
    client, b, queue, _ = setup
    job = queue.enqueue(JOB_FUNC, b.keys.namespace)
    client.hset(job.key, "data", zlib.compress(b"[" * 60_000))
    b.emit("s", {"n": 1})  # the real ticket, behind it
    run_worker(Batcher(client, namespace=b.keys.namespace), handlers=[__name__], burst=True)
    assert_refused(client, queue, job.id)
    assert [e.payload for batch in delivered for e in batch.events] == [{"n": 1}]


def test_pickle_data_is_never_loaded(setup) -> None:
    client, b, queue, tmp = setup
    job = queue.enqueue(JOB_FUNC, b.keys.namespace)
    client.hset(job.key, "data", zlib.compress(pickle.dumps((JOB_FUNC, None, Boom(str(tmp / "x")), {}))))
    run_worker(Batcher(client, namespace=b.keys.namespace), burst=True)
    assert not (tmp / "x").exists()
    assert_refused(client, queue, job.id)


def test_worker_that_allows_no_handler_warns_at_start(setup, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from distbatch import handlers

    monkeypatch.setattr(handlers, "_registered", {})  # other tests registered handlers in-process
    client, b, _, _ = setup
    with caplog.at_level(logging.WARNING, "distbatch.worker"):
        run_worker(Batcher(client, namespace=b.keys.namespace), burst=True)
    assert any("worker_allows_no_handler" in m for m in caplog.messages)


@pytest.mark.filterwarnings("ignore:Composite key:DeprecationWarning")  # the planted entries' form
def test_a_job_planted_among_the_abandoned_ones_never_has_its_callback_run(setup) -> None:
    """RQ's registry maintenance (at a worker's start, then every 10 minutes) fetches each job
    left started past its timeout and runs its failure callback. A job planted there by anyone
    who can write to Redis, naming any importable function, must not make the worker import or
    call it: the maintenance fetches with the door's job class too."""
    client, b, queue, _ = setup
    for target in (JOB_FUNC, "os.system"):
        job = Job.create(target, args=[b.keys.namespace], connection=client, serializer=JSONSerializer,
                         origin=queue.name, on_failure=Callback(f"{__name__}.evil_callback"))
        job.save()
        client.hset(job.key, "status", JobStatus.STARTED.value)
        client.zadd(f"rq:wip:{queue.name}", {job.id: 1})  # abandoned long ago
    b.emit("s", {"n": 1})  # the real ticket still runs
    run_worker(Batcher(client, namespace=b.keys.namespace), handlers=[__name__], burst=True)
    assert called == []
    assert [e.payload for batch in delivered for e in batch.events] == [{"n": 1}]


def test_a_real_ticket_abandoned_by_a_killed_worker_is_failed_by_rqs_maintenance(
        redis_server: RedisServer, namespace: str) -> None:
    """The door must not refuse RQ's own bookkeeping: a ticket whose worker was SIGKILLed mid-
    handler carries `started_at`, `last_heartbeat` and `worker_name`, and RQ's maintenance, which
    fetches it through the door, must still fail it (status failed, a TTL, in the failed
    registry) instead of leaving its hash behind for good."""
    import signal
    import subprocess
    import sys
    import time

    from rq.registry import StartedJobRegistry

    from distbatch.dispatch import make_queue
    from distbatch.testing import env_with_path

    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace)
    b.register("d", version="v1", source="s", handler="tests.handlers.slow_record",
               batch={"count": 1, "window": "1h"})
    b.emit("s", {"n": 1})
    queue = make_queue(client, b.keys)
    worker = subprocess.Popen(
        [sys.executable, "-m", "distbatch.cli", "worker", "--redis-url", redis_server.url, "--namespace",
         namespace, "--handlers", "tests.handlers"],
        env={**env_with_path(), "TEST_HANDLER_SLEEP": "30", "DISTBATCH_REDIS_URL": redis_server.url},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while client.get(f"test:inflight:{worker.pid}") is None:
            assert time.monotonic() < deadline, "the handler never started"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    registry = StartedJobRegistry(queue.name, connection=client, job_class=queue.job_class,
                                  serializer=JSONSerializer)
    (entry,) = registry.get_job_ids()
    job_id = entry.split(":")[0]
    registry.cleanup(timestamp=time.time() + 10**6)  # RQ's maintenance, its time come
    assert client.hget(Job.key_for(job_id), "status") == JobStatus.FAILED.value.encode()
    assert client.ttl(Job.key_for(job_id)) > 0
    assert job_id in FailedJobRegistry(queue.name, connection=client).get_job_ids()


def test_a_job_key_of_another_type_is_refused_and_the_worker_goes_on(setup,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """`SET rq:job:x ...` queued as a job: RQ's own read of it raised WRONGTYPE out of the
    dequeue loop; a burst worker exited 0 with the batches behind it undelivered."""
    client, b, queue, _ = setup
    client.set(Job.key_for("stringjob"), "not a hash")
    client.lpush(queue.key, "stringjob")
    b.emit("s", {"n": 1})  # the real ticket, behind it
    with caplog.at_level(logging.ERROR, "distbatch.worker"):
        run_worker(Batcher(client, namespace=b.keys.namespace), handlers=[__name__], burst=True)
    assert any("job_refused job=stringjob" in m and "holds no job hash" in m for m in caplog.messages)
    assert not client.exists(Job.key_for("stringjob"))
    assert [e.payload for batch in delivered for e in batch.events] == [{"n": 1}]
