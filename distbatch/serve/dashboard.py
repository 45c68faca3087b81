"""The live dashboard: `/` serves one static page; its data comes from the `/api/...` routes
below, which need the same bearer token as ingest (the page asks for it once per tab)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from importlib.resources import files

import redis
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..errors import describe
from .events import inspection_response, json_response
from .inspect import Inspector

log = logging.getLogger("distbatch")

_PAGE = files(__package__) / "static" / "dashboard.html"


async def page(request: Request) -> Response:
    return HTMLResponse(_PAGE.read_text(), headers={"Cache-Control": "no-store"})


Handler = Callable[[Request], Awaitable[Response]]


def redis_errors_are_503(handler: Handler) -> Handler:
    """Redis unreachable or stalled: a JSON 503 the page can show. Any other failure (a key of
    the wrong type, a value no reader expected) a JSON 500 naming it, as every other error of
    serve's: it was a bare text 500, for /metrics too."""
    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return json_response({"code": "redis_unavailable", "message": f"Redis unreachable: {exc}"}, 503)
        except redis.ResponseError as exc:
            hint = await asyncio.to_thread(_inspector(request).misfiled_hint, exc)
            log.error("dashboard_refused %s %s: %s%s", request.method, request.url.path, describe(exc), hint,
                      extra={"event": "dashboard_refused"})
            message = f"Redis refused: {describe(exc)}{hint}"
            return json_response({"code": "redis_refused", "message": message}, 500)
        except Exception as exc:
            log.exception("dashboard_failed %s %s", request.method, request.url.path,
                          extra={"event": "dashboard_failed"})
            return json_response({"code": "internal_error", "message": describe(exc)}, 500)

    return guarded


def _inspector(request: Request) -> Inspector:
    inspector: Inspector = request.app.state.inspector
    return inspector


@redis_errors_are_503
async def overview(request: Request) -> Response:
    return json_response(await asyncio.to_thread(_inspector(request).overview))


@redis_errors_are_503
async def dead_list(request: Request) -> Response:
    return inspection_response(await asyncio.to_thread(_inspector(request).dead))


@redis_errors_are_503
async def dead_detail(request: Request) -> Response:
    found = await asyncio.to_thread(_inspector(request).dead_detail, request.path_params["batch_id"])
    if found is None:
        return json_response({"code": "not_dead", "message": "no dead batch with that id"}, 404)
    return inspection_response(found)


async def _act(request: Request, action: str, done: str) -> Response:
    """Replay or purge one dead batch (the Inspector method named `action`)."""
    bid = request.path_params["batch_id"]
    if not await asyncio.to_thread(getattr(_inspector(request), action), bid):
        return json_response({"code": "not_dead", "message": f"batch {bid!r} is not dead"}, 404)
    return json_response({"id": bid, done: True})


@redis_errors_are_503
async def replay(request: Request) -> Response:
    return await _act(request, "replay", "replayed")


@redis_errors_are_503
async def purge(request: Request) -> Response:
    return await _act(request, "purge", "purged")


@redis_errors_are_503
async def metrics(request: Request) -> Response:
    body = await asyncio.to_thread(_inspector(request).metrics)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
