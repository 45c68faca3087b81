"""GET /healthz: Redis reachable (else 503), and whether sweepers and workers were seen lately.

No sweeper or no worker is `degraded` with 200 (ingest still works; batches wait in Redis);
`?strict=1` makes that a 503 too, for probes that should page on it."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import redis
from rq import Worker
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..aio import AsyncBatcher
from ..dispatch import Dispatcher

SEEN_WITHIN_MS = 30_000
CHECK_TIMEOUT_S = 3.0


def _live_workers(dispatcher: Dispatcher) -> int:
    now = datetime.datetime.now(datetime.UTC)
    live = 0
    for w in Worker.all(queue=dispatcher.queue):
        beat = w.last_heartbeat
        if beat is not None:
            if beat.tzinfo is None:
                beat = beat.replace(tzinfo=datetime.UTC)
            live += (now - beat).total_seconds() * 1000 <= SEEN_WITHIN_MS
    return live


async def healthz(request: Request) -> Response:
    batcher: AsyncBatcher = request.app.state.batcher
    body: dict[str, Any] = {"namespace": batcher.namespace}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):  # a probe must answer, whatever Redis does
            core = await batcher.start()
            now = await batcher.server_ms()
            sweepers = await batcher.client.zcount(core.keys.sweepers, now - SEEN_WITHIN_MS, "+inf")
            workers = (await asyncio.to_thread(_live_workers, batcher.dispatcher)
                       if batcher.dispatcher is not None else None)
    except (redis.ConnectionError, redis.TimeoutError, OSError, TimeoutError) as exc:
        error = str(exc) or f"no answer within {CHECK_TIMEOUT_S}s"
        body.update(status="down", redis={"ok": False, "error": error})
        return JSONResponse(body, status_code=503)
    warnings = []
    if not sweepers:
        warnings.append(f"no sweeper seen in the last {SEEN_WITHIN_MS // 1000}s: expired windows wait")
    if workers == 0:
        warnings.append(f"no worker seen in the last {SEEN_WITHIN_MS // 1000}s: batches wait in Redis")
    body.update(status="degraded" if warnings else "ok", redis={"ok": True, "server_ms": now},
                sweepers=int(sweepers), workers=workers, warnings=warnings)
    strict = request.query_params.get("strict") in ("1", "true", "yes")
    return JSONResponse(body, status_code=503 if warnings and strict else 200)
