"""GET /healthz: Redis reachable (else 503), and whether sweepers and workers were seen lately.

No sweeper or no worker, or a Redis that may evict distbatch's data, is `degraded` with 200
(ingest still works; batches wait in Redis); `?strict=1` makes that a 503 too, for probes that
should page on it."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import redis
from rq.utils import utcparse
from rq.worker_registration import get_keys
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..aio import AsyncBatcher
from ..dispatch import Dispatcher
from ..eviction import eviction_risk_async
from ..keys import SEEN_LIVE_MS

CHECK_TIMEOUT_S = 3.0
EVICTION_EVERY_S = 60.0


def _live_workers(dispatcher: Dispatcher) -> int:
    """Workers of the queue whose heartbeat is recent, read from their registrations' raw
    `last_heartbeat` (not `Worker.all`, which parses every field and raises on one registration
    a hostile writer garbled: the probe would answer 500; such an entry is not counted)."""
    now = datetime.datetime.now(datetime.UTC)
    keys = sorted(get_keys(queue=dispatcher.queue))
    pipe = dispatcher.client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "last_heartbeat")
    live = 0
    for raw in pipe.execute() if keys else []:
        try:
            beat = utcparse(raw.decode() if isinstance(raw, bytes) else raw)
        except (TypeError, ValueError, AttributeError):
            continue
        if beat.tzinfo is None:  # RQ before 2.1 parses to naive UTC
            beat = beat.replace(tzinfo=datetime.UTC)
        live += (now - beat).total_seconds() * 1000 <= SEEN_LIVE_MS
    return live


async def _eviction(request: Request, batcher: AsyncBatcher) -> str | None:
    """`eviction_risk` to data (allkeys-*), read at most once a minute (a setting, not a state)."""
    checked = getattr(request.app.state, "eviction", None)
    if checked is None or time.monotonic() - checked[0] > EVICTION_EVERY_S:
        checked = request.app.state.eviction = (time.monotonic(),
                                                 await eviction_risk_async(batcher.client, data_only=True))
    risk: str | None = checked[1]
    return risk


async def healthz(request: Request) -> Response:
    batcher: AsyncBatcher = request.app.state.batcher
    body: dict[str, Any] = {"namespace": batcher.namespace}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):  # a probe must answer, whatever Redis does
            for attempt in (1, 2):  # a pooled connection Redis closed (it restarted) fails once
                try:
                    core = await batcher.start()
                    now = await batcher.server_ms()
                    break
                except redis.ConnectionError:
                    if attempt == 2:
                        raise
            sweepers = await batcher.client.zcount(core.keys.sweepers, now - SEEN_LIVE_MS, "+inf")
            # distbatch workers' own heartbeats (rebuilt after Redis lost its data, unlike RQ's
            # registry), or, for plain `rq worker`s running the tickets, RQ's registry
            workers: int | None = await batcher.client.zcount(core.keys.workers, now - SEEN_LIVE_MS, "+inf")
            evicts = await _eviction(request, batcher)
            unread = None
            if not workers and batcher.dispatcher is not None:
                try:
                    workers = await asyncio.to_thread(_live_workers, batcher.dispatcher)
                except redis.ResponseError as exc:  # a registry key of another type (a hostile writer's)
                    unread = f"workers cannot be counted: {exc}"
                except (redis.RedisError, OSError) as exc:  # the queue's own Redis (--queue-url),
                    # not the namespace's: ingest goes on, hand-offs wait for the sweepers
                    workers, unread = None, f"the queue's Redis (--queue-url) is unreachable: {exc}"
    except (redis.ConnectionError, redis.TimeoutError, OSError, TimeoutError) as exc:
        error = str(exc) or f"no answer within {CHECK_TIMEOUT_S}s"
        body.update(status="down", redis={"ok": False, "error": error})
        return JSONResponse(body, status_code=503)
    warnings = [w for w in (unread, evicts) if w]
    if not sweepers:
        warnings.append(f"no sweeper seen in the last {SEEN_LIVE_MS // 1000}s: expired windows wait")
    if workers == 0:
        warnings.append(f"no worker seen in the last {SEEN_LIVE_MS // 1000}s: batches wait in Redis")
    body.update(status="degraded" if warnings else "ok", redis={"ok": True, "server_ms": now},
                sweepers=int(sweepers), workers=workers, warnings=warnings)
    strict = request.query_params.get("strict") in ("1", "true", "yes")
    return JSONResponse(body, status_code=503 if warnings and strict else 200)
