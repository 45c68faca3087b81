"""uvicorn's HTTP protocol with bounds on what one client may hold of the server: a request's
head (its size and how long it may take), the unread rest of a body after its response went out,
and the number of connections at once.

uvicorn bounds neither of the first two (its httptools parser keeps whatever a header line grows
to): a client with no token could send headers without end, holding memory and the one event loop
every request and /healthz share, or trickle a byte now and then and hold its connection for good.
A request answered before its body was read (a 401, a 413 on a declared length, a 400 on the
query) left the rest of the body with no timer at all: one byte after the answer cancelled the
keep-alive timer, and a thousand such connections made every request, /healthz too, a 503.
Bodies read by the app have their own bound (`--body-timeout`, `--max-body-bytes`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_MAX_BYTES = 64 << 10
"""Request line and headers together (nginx's default is 32 KiB): 431 above."""


class HeadGuard(HttpToolsProtocol):
    """Above `HEAD_MAX_BYTES` of head: 431; a head (or a first request) not in within the
    timeout: 408; a request past `max_connections` connections (or requests) at once: 503, JSON
    as every other refusal (uvicorn's own was text). Each closes the connection. A body whose
    response went out before it was read must end within `body_timeout_s`, else the connection
    is closed."""

    head_timeout_s = 10.0  # set per server by `guarded`
    body_timeout_s = 30.0
    max_connections: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head, self._head_bytes, self._began = True, 0, False
        self._parsed = 0  # the head's line and headers as the parser handed them over
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_in = True  # the current request's body was read whole (or it has none)
        self._answered = False  # the current request's response went out before its body was in
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._body_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._began = False
        super().data_received(data)
        # counted once the parser has it, from the first read after the head began (a read that
        # also ends the request before it, pipelined, is not this head's: memory stays within a
        # read and the bound)
        if self._in_head and not self._began and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_MAX_BYTES:
                self._refuse(431, f"request head above {HEAD_MAX_BYTES} bytes")

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._parsed = 0
        self._body_in, self._answered = False, False
        self._body_done()  # the next request: the head timer bounds it now
        if not self._in_head:  # the next request on a kept connection
            self._in_head, self._head_bytes, self._began = True, 0, True
            self._arm()

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            self._parsed += len(url) + 16  # with the method and the protocol
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            self._parsed += len(name) + len(value) + 4
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        # The read that ends a head is counted here, exactly: after it, `data_received` no longer
        # sees a head (a 100 KB head that ended in its second read passed)
        if self._refused:
            return
        self._in_head = False
        self._disarm()
        if self._parsed > HEAD_MAX_BYTES:
            self._refused = True  # the rest of this read is not parsed into a request: none runs
            self._refuse(431, f"request head above {HEAD_MAX_BYTES} bytes")
            return
        limit = self.max_connections
        if limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit):
            self._refused = True
            self._refuse(503, f"more than {limit} connections or requests at once; try again")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_in = True
        self._body_done()
        if self._answered and not self.transport.is_closing():
            # its body's bytes cancelled uvicorn's keep-alive timer, armed when the answer went
            # out: an idle connection is closed as any other, not held for ever
            self._body_timer = self.loop.call_later(self.timeout_keep_alive, self.transport.close)
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle  # the request parsed last: the one answered unless others are pipelined
        if (not self._body_in and cycle is not None and cycle.response_complete
                and not self.transport.is_closing()):  # answered before its body
            self._answered = True
            self._body_done()
            self._body_timer = self.loop.call_later(self.body_timeout_s, self.transport.close)

    def _body_done(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"request head not in within {self.head_timeout_s:g}s")

    def _refuse(self, status: int, why: str) -> None:
        self._disarm()
        reason, code = {408: (b"Request Timeout", b"head_timeout"),
                        431: (b"Request Header Fields Too Large", b"head_too_large"),
                        503: (b"Service Unavailable", b"too_many_connections")}[status]
        body = b'{"code":"%s","message":"%s"}' % (code, why.encode())
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()


def guarded(head_timeout_s: float, body_timeout_s: float = 30.0,
            max_connections: int | None = None) -> type[HeadGuard]:
    """The protocol class for one server (uvicorn takes a class, and builds one per connection)."""
    return type("HeadGuard", (HeadGuard,), {"head_timeout_s": head_timeout_s,
                                            "body_timeout_s": body_timeout_s,
                                            "max_connections": max_connections})
