"""POST /v1/sources/{source}/events: JSON (one object or an array) or NDJSON in, one result per
event and binding out. Limits are checked while the body streams in; nothing is stored unless
every event of the request is valid."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
import redis
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .. import strictjson
from ..aio import AsyncBatcher
from ..codec import LazyEvents
from ..errors import ConfigError, EmitError, PayloadError, describe
from ..models import TRACEPARENT, Batch, EmitResult
from . import idempotency
from .settings import ServeSettings

log = logging.getLogger("distbatch.serve")

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")


class Refused(Exception):
    """A request distbatch will not store: status, stable code, message, extra fields."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra

    def response(self) -> Response:
        return json_response({"code": self.code, "message": str(self), **self.extra}, self.status)


def json_response(body: Any, status: int = 200) -> Response:
    """orjson: several times faster than the stdlib on 1,000-result bodies. What JSON has no
    type for (another language's msgpack bytes, timestamps, int map keys, in a dead batch's
    payloads) is shown as its repr, and a partition key of bytes that are no UTF-8 (surrogate
    escapes) as JSON's escapes: never a 500."""
    try:
        data = orjson.dumps(body)
    except TypeError:
        data = strictjson.dumps(body, default=repr).encode()
    return Response(data, status_code=status, media_type="application/json")


def inspection_response(body: Any) -> Response:
    """A dead batch as the dashboard shows it: a payload's NaN or Infinity (which the library
    lets through) as the string "NaN" / "Infinity" (orjson writes null, hiding what is there;
    the stdlib wrote NaN, which no browser parses), what JSON has no type for as its repr."""
    return Response(strictjson.dumps(body, default=repr).encode(), media_type="application/json")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, "body_too_large", f"body of {declared} bytes is above the limit of {limit} bytes",
                      limit=limit)
    chunks, size = [], 0
    try:  # a client that stalls mid-body holds no connection (nor a shutdown) for ever
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Refused(413, "body_too_large", f"body is above the limit of {limit} bytes",
                                  limit=limit)
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, "body_timeout", f"the body did not arrive within {timeout_s:g} s "
                      f"({size} bytes came); nothing was stored") from None
    return b"".join(chunks)


def parse_events(body: bytes, content_type: str,
                 max_events: int) -> tuple[list[dict[str, Any]], list[int] | None]:
    """One object, an array of objects (JSON), or one object per line (NDJSON); and for NDJSON
    each event's line, which an error about an event names beside its index (blank lines are
    skipped, so the two differ)."""
    media = content_type.split(";", 1)[0].strip().lower()
    lines: list[int] | None = None
    if media in NDJSON_TYPES:
        events, lines = [], []
        for line_no, line in enumerate(body.splitlines(), 1):
            if line.strip():
                events.append(_json(line, line=line_no))
                lines.append(line_no)
                if len(events) > max_events:
                    raise _too_many(max_events)
    elif media in ("", "application/json") or media.endswith("+json"):
        doc = _json(body)
        events = doc if isinstance(doc, list) else [doc]
    else:
        raise Refused(415, "content_type_unsupported",
                      f"content-type={content_type!r}: send application/json or application/x-ndjson")
    if len(events) > max_events:
        raise _too_many(max_events)
    for i, e in enumerate(events):
        if not isinstance(e, dict):
            raise Refused(422, "payload_type", f"event {i}{_on_line(lines, i)} is a JSON {_json_type(e)}, "
                          "not an object", **_where(lines, i))
    return events, lines


def _where(lines: list[int] | None, event: int) -> dict[str, int]:
    """An error's `event`, and its `line` for NDJSON."""
    return {"event": event} if lines is None else {"event": event, "line": lines[event]}


def _on_line(lines: list[int] | None, event: int) -> str:
    return "" if lines is None else f" (line {lines[event]})"


def _json_type(value: object) -> str:
    """What a client in any language calls the value (Python's names were no JSON's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else type(value).__name__


def _too_many(limit: int) -> Refused:
    return Refused(413, "too_many_events", f"more than {limit} events in one request", limit=limit)


def _json(data: bytes, line: int | None = None) -> Any:
    try:
        return strictjson.loads(data)
    except (ValueError, RecursionError) as exc:
        where = f"line {line}: " if line is not None else ""
        raise Refused(400, "invalid_json", f"{where}{exc}", **({"line": line} if line else {})) from None


def _batch(b: Batch | None) -> dict[str, Any] | None:
    if b is None:
        return None
    size = b.events.stored() if isinstance(b.events, LazyEvents) else len(b.events)  # not decoded
    return {"id": b.id, "reason": b.reason, "size": size, "discarded": b.discarded}


def result_json(r: EmitResult) -> dict[str, Any]:
    return {"event": r.event, "binding": r.binding, "partition_key": r.partition_key,
            "batch": _batch(r.batch), "expired": _batch(r.expired), "overflowed": r.overflowed}


async def post_events(request: Request) -> Response:
    settings: ServeSettings = request.app.state.settings
    batcher: AsyncBatcher = request.app.state.batcher
    source = request.path_params["source"]
    slot: idempotency.Slot | None = None
    key: str | None = None
    try:
        unknown = sorted(set(request.query_params) - {"results"})
        if unknown:  # `?reslts=cuts` answered every result, unseen
            named = [u[:40] for u in unknown[:5]]
            raise Refused(400, "query_invalid", f"unknown query parameter(s) {named}; known: results",
                          parameters=named)
        modes = request.query_params.getlist("results") or ["all"]
        for results_mode in modes:  # each: `?results=everything&results=cuts` passed on the last
            if results_mode not in ("all", "cuts"):  # refused before anything is read or stored
                raise Refused(400, "results_invalid",
                              f"results={results_mode[:100]!r}: use 'all' or 'cuts'")
        if len(set(modes)) > 1:
            raise Refused(400, "results_invalid", f"results given as {modes[:5]}: give one")
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout_ms / 1000)
        content_type = request.headers.get("content-type", "")
        key = request.headers.get(idempotency.HEADER)
        what = f"{source}\0{request.url.query}\0{content_type}".encode() if key is not None else b""
        taken = await idempotency.take(batcher.client, settings.namespace, key, what, body)
        if isinstance(taken, Response):  # a retry: the first request's response, stored once
            return taken
        slot = taken
        response, stored = await _store(request, batcher, settings, source, body, content_type)
    except idempotency.KeyRefused as exc:
        return Refused(exc.status, exc.code, str(exc)).response()
    except Refused as r:
        response, stored = r.response(), False
    except ClientDisconnect:  # the client left mid-body: nothing was stored, nobody to answer
        return Response(status_code=400)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        held = (" (the Idempotency-Key was being taken when it failed: it may be held a minute, "
                "and a retry meanwhile is answered 409)") if slot is None and key is not None else ""
        response, stored = Refused(503, "redis_unavailable",
                                   f"Redis unreachable, nothing was stored: {exc}{held}").response(), False
    except redis.RedisError as exc:  # refused before any event was sent: out of memory, read-only
        why = f"Redis refused the request, nothing was stored: {describe(exc)}"
        response, stored = Refused(503, "redis_refused", why).response(), False
    except Exception as exc:  # a fault of ours, maybe after the events were stored: kept as such
        log.exception("request_failed source=%s", source, extra={"event": "request_failed"})
        response = Refused(500, "internal_error", f"{describe(exc)}; events of this request may have "
                           "been stored (an Idempotency-Key replays this answer)").response()
        stored = True
    # a failure leaves the key pending for its minute: a retry meanwhile is told so, then runs
    with contextlib.suppress(redis.RedisError):
        await idempotency.settle(batcher.client, slot, response, stored, settings.idempotency_keep_ms)
    return response


async def _store(request: Request, batcher: AsyncBatcher, settings: ServeSettings, source: str,
                 body: bytes, content_type: str) -> tuple[Response, bool]:
    """The response, and whether anything of the request may have been stored."""
    lines: list[int] | None = None
    try:
        events, lines = parse_events(body, content_type, settings.max_events)
        traceparent = request.headers.get("traceparent", "")
        if TRACEPARENT.fullmatch(traceparent):  # the request's trace, for events without their own
            for e in events:
                e.setdefault("traceparent", traceparent)
        if not events:  # nothing to store, but a typo'd source still gets its 404
            bound = any(b.source == source for b in (await batcher.bindings()).values())
            results = []
        else:
            results = await batcher.emit_many(source, events)
            bound = bool(results)
        if not bound:
            raise Refused(404, "source_unbound",
                          f"source={source!r}: no trigger is bound to it in namespace "
                          f"{settings.namespace!r}; nothing was stored", source=source)
    except PayloadError as exc:
        status = 413 if exc.code == "payload_too_large" else 422
        if exc.event is None:
            return Refused(status, exc.code, str(exc)).response(), False
        return Refused(status, exc.code, f"{exc}{_on_line(lines, exc.event)}",
                       **_where(lines, exc.event)).response(), False
    except ConfigError as exc:
        return Refused(400, exc.code, str(exc)).response(), False
    except EmitError as exc:
        if not exc.stored and not exc.uncertain:  # nothing reached Redis, or it wrote nothing
            if isinstance(exc.__cause__, redis.ResponseError):  # out of memory, read-only
                return Refused(503, "redis_refused", f"Redis refused the request, nothing was stored: "
                               f"{describe(exc.__cause__)}").response(), False
            return Refused(503, "redis_unavailable", f"Redis unreachable, nothing was stored: "
                           f"{exc.__cause__ or exc}").response(), False
        return json_response({
            "code": "redis_failed_part_way", "message": str(exc), "stored": exc.stored,
            "uncertain": exc.uncertain, "not_sent": exc.not_sent,
            "results": [result_json(r) for r in exc.results],
        }, 503), True
    sparse = request.query_params.get("results") == "cuts"
    out = [result_json(r) for r in results
           if not sparse or r.batch is not None or r.expired is not None or r.overflowed]
    return json_response({"events": len(events), "results": out}), True
