"""`Idempotency-Key` on HTTP ingest: a client that never got the response to a POST (a timeout,
a dropped connection) sends it again with the same key and gets the first response back, its
events stored once. The library's own retries are safe by call id; this is the same for a client
in any language, across its own retries.

The key's record (`Keys.request`) is taken before the events are stored (`pending`, for a minute)
and holds the response after (a day). A request whose key is pending is answered 409; one whose
key was used for another body (or source) 422. A response that stored nothing (a bad payload,
Redis away) is not kept, so the same key can be sent again once the cause is fixed. The one gap:
the server dying between storing the events and recording the response leaves the key pending
for its minute, after which a retry stores them again.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from ..keys import Keys

HEADER = "idempotency-key"
PENDING_MS = 60_000
KEPT_MS = 86_400_000
_VALID = re.compile(r"[\x21-\x7e]{1,255}")
REPLAYED = "idempotent-replayed"
ZIPPED = b"z"
"""Before the status of a kept response compressed with zlib: a serve of a version before, which
reads no such status, answers 500 (and the client sends again) instead of replaying the zlib
bytes as the response during a rolling deploy."""


class KeyRefused(Exception):
    """The key cannot be used for this request: status, code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True, slots=True)
class Slot:
    """A key taken for this request: where its record is, and what the request was."""

    key: str
    digest: bytes


async def take(client: Any, namespace: str, key: str | None, request: bytes, body: bytes
               ) -> Slot | Response | None:
    """None without a key; the kept response of a request sent before with it; else the slot
    this request now holds. `request`: what besides the body makes the response (the source,
    the query, the content type). Raises `KeyRefused`."""
    if key is None:
        return None
    if not _VALID.fullmatch(key):
        raise KeyRefused(400, "idempotency_key_invalid",
                         f"Idempotency-Key={key[:80]!r}: 1 to 255 printable ASCII characters, no spaces")
    name = Keys(namespace).request(hashlib.sha256(key.encode()).hexdigest())
    digest = hashlib.sha256(request + b"\0" + body).hexdigest().encode()
    for _ in range(2):  # the record may expire between the two calls: take it then
        if await client.set(name, b"pending " + digest, nx=True, px=PENDING_MS):
            return Slot(name, digest)
        held = await client.get(name)
        if held is not None:
            break
    else:
        raise KeyRefused(409, "idempotency_key_in_flight", "Idempotency-Key is being taken; send again")
    state, _, rest = held.partition(b" ")
    held_digest, _, kept = rest.partition(b" ")
    if held_digest != digest:
        raise KeyRefused(422, "idempotency_key_reused",
                         f"Idempotency-Key={key!r} was sent with another request (source, query, "
                         "content type or body); use a new key for a new request")
    if state == b"pending":
        raise KeyRefused(409, "idempotency_key_in_flight",
                         f"Idempotency-Key={key!r}: the first request with it is still being stored; send "
                         "again in a moment")
    status, _, response = kept.partition(b" ")
    if status.startswith(ZIPPED):
        status, response = status[len(ZIPPED):], zlib.decompress(response)
    return Response(response, status_code=int(status), media_type="application/json",
                    headers={REPLAYED: "true"})


async def settle(client: Any, slot: Slot | None, response: Response, stored: bool,
                 kept_ms: int = KEPT_MS) -> None:
    """Keep the response for the key's retries when anything may have been stored; else free the
    key. A failure here leaves the key pending until its minute runs out."""
    if slot is None:
        return
    if stored:  # compressed: a response is a result per event and binding, ~7x the request
        # it answers, kept a day (a key per request at full rate held hundreds of GB)
        record = b"done %b %b%d %b" % (slot.digest, ZIPPED, response.status_code,
                                         zlib.compress(bytes(response.body), 1))
        await client.set(slot.key, record, px=kept_ms)
    else:
        await client.delete(slot.key)
