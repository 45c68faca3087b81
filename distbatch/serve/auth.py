"""Bearer-token auth for every route but the open ones (health probes, the API document)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..exposure import bearer_ok, local_only_refusal, repeated_header

OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/"})
"""Open: probes, the API document, and the dashboard's page (its data calls need a token)."""


class BearerAuth:
    """ASGI middleware: `Authorization: Bearer <token>` must match one configured token (compared
    in constant time). No tokens = auth off (only ever allowed on loopback, see settings), and then
    only requests that a local program, not a web page, sent (`local_only_refusal`)."""

    def __init__(self, app: ASGIApp, tokens: Iterable[str]) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        repeated = repeated_header(scope["headers"]) if scope["type"] == "http" else None
        if repeated is not None:
            name = repeated.decode("latin-1")
            refused = JSONResponse({"code": "header_repeated",
                                    "message": f"header {name} given more than once; it takes one"},
                                   status_code=400)
            await refused(scope, receive, send)
            return
        if scope["type"] == "http" and not self.tokens:
            why = local_only_refusal(dict(scope["headers"]))
            if why is not None:
                refused = JSONResponse({"code": "not_local", "message": why}, status_code=403)
                await refused(scope, receive, send)
                return
        if scope["type"] != "http" or not self.tokens or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        if bearer_ok(header, self.tokens):
            await self.app(scope, receive, send)
            return
        code = "auth_invalid" if header else "auth_missing"
        response = JSONResponse(
            {"code": code, "message": "send Authorization: Bearer <token> with a configured API token"},
            status_code=401, headers={"WWW-Authenticate": 'Bearer realm="distbatch"'},
        )
        await response(scope, receive, send)
