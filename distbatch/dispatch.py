"""Hand cut batches to RQ: one job per batch, job id derived from the batch id, JSON-serialized."""

from __future__ import annotations

from collections.abc import Sequence

from rq import Queue
from rq.serializers import JSONSerializer

from .batcher import Batcher

JOB_FUNC = "distbatch.jobs.run_batch"


def job_id(namespace: str, batch_id: str) -> str:
    return f"distbatch-{namespace}-{batch_id}"


def make_queue(batcher: Batcher) -> Queue:
    return Queue(batcher.keys.queue_name, connection=batcher.client, serializer=JSONSerializer)


class Dispatcher:
    """`on_cut` hook of a Batcher: enqueue right after the cut and push the re-hand-off time out.

    If this process dies between the cut and the enqueue, the batch is still due in the ready set
    after the hand-off grace, and a sweeper enqueues it. If a job is lost after the enqueue (its
    worker died before claiming it), the batch is due again after `redeliver_after_ms`; a sweeper
    then re-enqueues it unless its job is still waiting in the queue.
    Enqueuing a batch twice is harmless: the claim lets only one run hold it at a time.
    """

    def __init__(self, batcher: Batcher, *, redeliver_after_ms: int = 5_000) -> None:
        self.batcher = batcher
        self.queue = make_queue(batcher)
        self.redeliver_after_ms = redeliver_after_ms
        self.namespace = batcher.keys.namespace

    def __call__(self, batch_ids: Sequence[str], server_ms: int | None = None) -> None:
        """Enqueue the batches and push their due time out, in one round trip.

        `server_ms` is the cut's server time; without it (a replay) one TIME call fetches it.
        """
        if not batch_ids:
            return
        if server_ms is None:
            server_ms = self.batcher.server_ms()
        ns = self.namespace
        with self.batcher.client.pipeline() as pipe:
            self.queue.enqueue_many(
                [
                    Queue.prepare_data(
                        JOB_FUNC, args=(ns, bid), job_id=job_id(ns, bid), timeout=-1,
                        result_ttl=0, failure_ttl=86_400, description=f"distbatch batch {bid}",
                    )
                    for bid in batch_ids
                ],
                pipeline=pipe,
            )
            self.batcher.mark_handed_off(batch_ids, self.redeliver_after_ms, server_ms, pipe)
            pipe.execute()

def attach(batcher: Batcher, **options: int) -> Batcher:
    """Make `batcher` hand every batch it cuts to the workers at once."""
    batcher.on_cut = Dispatcher(batcher, **options)
    return batcher
