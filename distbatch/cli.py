"""The `distbatch` command."""

from __future__ import annotations

import logging
import random
import time

import click

from .batcher import Batcher


def _connect(redis_url: str | None, namespace: str) -> Batcher:
    if redis_url:
        return Batcher.from_url(redis_url, namespace=namespace)
    import fakeredis

    return Batcher(fakeredis.FakeRedis(), namespace=namespace)


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """distbatch: batch events across processes and machines on Redis."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")


@main.command()
@click.option("--redis-url", envvar="DISTBATCH_REDIS_URL", default=None,
              help="Redis to use; embedded fakeredis when omitted.")
@click.option("--namespace", default="distbatch-demo", show_default=True)
@click.option("--events", default=300, show_default=True, help="Events to emit.")
@click.option("--keys", "n_keys", default=5, show_default=True, help="Distinct repos.")
@click.option("--count", default=10, show_default=True, help="Batch size.")
@click.option("--window", default="300ms", show_default=True, help="Batch window.")
def demo(redis_url: str | None, namespace: str, events: int, n_keys: int, count: int,
         window: str) -> None:
    """Emit events over several keys and print batches as they fire and as windows expire."""
    batcher = _connect(redis_url, namespace)
    key = batcher.register("pr-digest", version="v1", source="pr.merged",
                           batch={"count": count, "window": window, "key": "repo"},
                           handler="workers.handlers.print_batch")
    rng = random.Random(7)
    by_reason = {"count": 0, "expired": 0}
    delivered = 0

    def show(batch) -> None:
        nonlocal delivered
        by_reason[batch.reason] += 1
        delivered += len(batch.events)
        numbers = [e.payload["number"] for e in batch.events]
        click.echo(f"batch {batch.id:>4} {batch.reason:<7} repo={batch.partition_key:<10} "
                   f"{len(numbers):>3} events: {numbers[:6]}{' ...' if len(numbers) > 6 else ''}")

    for i in range(events):
        payload = {"repo": f"acme/r{rng.randrange(n_keys)}", "number": i}
        for r in batcher.emit("pr.merged", payload):
            if r.batch:
                show(r.batch)
        for b in batcher.flush_expired():
            show(b)
        time.sleep(rng.random() * 0.004)
    deadline = time.monotonic() + 10
    while batcher.client.zcard(batcher.keys.deadlines) and time.monotonic() < deadline:
        for b in batcher.flush_expired():
            show(b)
        time.sleep(0.01)
    pending = batcher.drop(key)
    click.echo(f"\n{events} events in: {by_reason['count']} batches at count, "
               f"{by_reason['expired']} at expiry, {delivered} events in batches, "
               f"{len(pending)} left pending")
