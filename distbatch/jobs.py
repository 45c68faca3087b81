"""The one RQ job function. Workers configure it at start; it never imports a path from Redis
that the worker did not allow."""

from __future__ import annotations

import os
import threading

from .batcher import Batcher
from .executor import Executor
from .handlers import HandlerResolver

_lock = threading.Lock()
_executors: dict[str, Executor] = {}
_defaults: dict[str, object] = {}


def configure(batcher: Batcher, resolver: HandlerResolver, lease_ms: int) -> Executor:
    """Called by `distbatch worker` before it starts taking jobs."""
    executor = Executor(batcher, resolver, lease_ms)
    with _lock:
        _executors[batcher.keys.namespace] = executor
        _defaults.update(resolver=resolver, lease_ms=lease_ms, client=batcher.client)
    return executor


def _executor(namespace: str) -> Executor:
    with _lock:
        if namespace in _executors:
            return _executors[namespace]
        # A plain `rq worker` (not `distbatch worker`): use its connection and the allowlist
        # from DISTBATCH_HANDLERS, so nothing is importable unless someone allowed it.
        from rq import get_current_job

        job = get_current_job()
        client = _defaults.get("client") or (job.connection if job else None)
        if client is None:
            raise RuntimeError("distbatch job run outside a worker")
        resolver = _defaults.get("resolver") or HandlerResolver(
            os.environ.get("DISTBATCH_HANDLERS", "").split(",")
        )
        lease_ms = int(_defaults.get("lease_ms") or 10_000)  # type: ignore[call-overload]
        executor = Executor(Batcher(client, namespace=namespace), resolver, lease_ms)  # type: ignore[arg-type]
        _executors[namespace] = executor
        return executor


def run_batch(namespace: str, batch_id: str) -> str:
    """RQ entry point: run one batch; returns what happened (delivered, retry, dead, gone, ...)."""
    return _executor(namespace).run(batch_id).status
