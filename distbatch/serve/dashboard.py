"""The live dashboard: `/` serves one static page; its data comes from the `/api/...` routes
below, which need the same bearer token as ingest (the page asks for it once per tab)."""

from __future__ import annotations

import asyncio
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .events import json_response
from .inspect import Inspector

_PAGE = files(__package__) / "static" / "dashboard.html"


async def page(request: Request) -> Response:
    return HTMLResponse(_PAGE.read_text(), headers={"Cache-Control": "no-store"})


def _inspector(request: Request) -> Inspector:
    inspector: Inspector = request.app.state.inspector
    return inspector


async def overview(request: Request) -> Response:
    return json_response(await asyncio.to_thread(_inspector(request).overview))


async def dead_list(request: Request) -> Response:
    return json_response(await asyncio.to_thread(_inspector(request).dead))


async def dead_detail(request: Request) -> Response:
    found = await asyncio.to_thread(_inspector(request).dead_detail, request.path_params["batch_id"])
    if found is None:
        return json_response({"code": "not_dead", "message": "no dead batch with that id"}, 404)
    return json_response(found)


async def replay(request: Request) -> Response:
    bid = request.path_params["batch_id"]
    if not await asyncio.to_thread(_inspector(request).replay, bid):
        return json_response({"code": "not_dead", "message": f"batch {bid!r} is not dead"}, 404)
    return json_response({"id": bid, "replayed": True})


async def purge(request: Request) -> Response:
    bid = request.path_params["batch_id"]
    if not await asyncio.to_thread(_inspector(request).purge, bid):
        return json_response({"code": "not_dead", "message": f"batch {bid!r} is not dead"}, 404)
    return json_response({"id": bid, "purged": True})


async def metrics(request: Request) -> Response:
    body = await asyncio.to_thread(_inspector(request).metrics)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
