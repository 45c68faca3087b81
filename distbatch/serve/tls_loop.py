"""The event loop `serve --tls-cert` runs on: its TLS servers bound the handshake.

uvicorn passes no `ssl_handshake_timeout` to `create_server`, so a connection that never begins
its handshake was held for asyncio's 60 s, before HeadGuard (which only sees a connection once
the handshake is done) could time its head: a client with no token could hold a socket and an SSL
object for a minute per connection. Bound here by the same `--header-timeout` as a plain
connection's first request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def bounded_handshake_loop(handshake_timeout_s: float) -> Callable[[], asyncio.AbstractEventLoop]:
    """A loop factory for `asyncio.Runner`: uvloop's loop where uvicorn would pick it, else asyncio's."""
    base: type[asyncio.AbstractEventLoop]
    try:
        import uvloop

        base = uvloop.Loop
    except ImportError:
        base = asyncio.SelectorEventLoop

    create: Any = base.create_server  # its overloads fit no pass-through

    async def create_server(self: asyncio.AbstractEventLoop, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None and kwargs.get("ssl_handshake_timeout") is None:
            kwargs["ssl_handshake_timeout"] = handshake_timeout_s
        return await create(self, *args, **kwargs)

    loop_type = type("BoundedHandshakeLoop", (base,), {"create_server": create_server})
    return loop_type
