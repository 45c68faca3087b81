"""The ASGI app of `distbatch serve` (Starlette; uvicorn runs it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import orjson
import redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..aio import AsyncBatcher, connect_async
from ..clients import cluster_unreachable, connect
from ..errors import describe
from . import dashboard
from .auth import BearerAuth
from .events import post_events
from .health import healthz
from .inspect import SAMPLE_EVERY_S, Inspector
from .openapi import document, openapi
from .settings import ServeSettings

log = logging.getLogger("distbatch.serve")


def _version() -> str:
    try:
        return version("distbatch")
    except PackageNotFoundError:
        return "0"


def create_app(settings: ServeSettings, batcher: AsyncBatcher | None = None) -> Starlette:
    """The app; it builds its AsyncBatcher at startup unless one is given. Redis down at startup
    is not fatal: /healthz says so, and the first request that needs Redis connects."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        b = batcher
        if b is None:
            queue = connect(settings.queue_url, "queue_url") if settings.queue_url else None
            b = AsyncBatcher(connect_async(settings.redis_url), namespace=settings.namespace,
                             queue_client=queue, max_payload_bytes=settings.max_event_bytes)
        app.state.batcher = b
        try:
            await b.start()
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError):
            raise  # a mistake, not an outage to serve through (the CLI says so before it starts)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException) as exc:
            if not (isinstance(exc, redis.RedisError) or cluster_unreachable(exc)):
                raise  # a node of no cluster: a mistake
            log.warning("redis_unavailable at startup: %s; serving, /healthz reports it", exc)
        log.info("serve_started namespace=%s listening on http://%s:%d auth=%s", settings.namespace,
                 f"[{settings.host}]" if ":" in settings.host else settings.host, settings.port,
                 "bearer" if settings.tokens else "none (loopback only)")
        sampler = asyncio.create_task(_sample(app.state.inspector))
        yield
        sampler.cancel()
        if batcher is None:
            await b.aclose()

    app = Starlette(
        routes=[Route("/v1/sources/{source:path}/events", post_events, methods=["POST"]),
                Route("/healthz", healthz, methods=["GET"]),
                Route("/openapi.json", openapi, methods=["GET"]),
                Route("/metrics", dashboard.metrics, methods=["GET"]),
                Route("/", dashboard.page, methods=["GET"]),
                Route("/api/overview", dashboard.overview, methods=["GET"]),
                Route("/api/dead", dashboard.dead_list, methods=["GET"]),
                Route("/api/dead/{batch_id}", dashboard.dead_detail, methods=["GET"]),
                Route("/api/dead/{batch_id}/replay", dashboard.replay, methods=["POST"]),
                Route("/api/dead/{batch_id}/purge", dashboard.purge, methods=["POST"])],
        middleware=[Middleware(BearerAuth, tokens=settings.tokens)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.inspector = Inspector(settings)
    app.state.openapi = document(_version())
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, a method a route does not take) as the API's
    other errors are: JSON with a stable code, and what the routes are."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = (f"{request.method} {request.url.path}: {exc.detail}; ingest is POST "
               "/v1/sources/<source>/events, the API is described at GET /openapi.json")
    return Response(orjson.dumps({"code": code, "message": message}), status_code=exc.status_code,
                    media_type="application/json", headers=exc.headers)


async def _sample(inspector: Inspector) -> None:
    """The dashboard's rate history: a sample of the totals every SAMPLE_EVERY_S."""
    while True:
        try:
            await asyncio.to_thread(inspector.sample)
        except Exception as exc:  # Redis down: the page shows a gap, /healthz says why
            log.debug("sample_failed: %s", describe(exc))
        await asyncio.sleep(SAMPLE_EVERY_S)
