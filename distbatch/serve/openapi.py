"""The OpenAPI document of `distbatch serve`, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _dead(summary: str) -> dict[str, Any]:
    """An operation of the dashboard on one dead batch."""
    return {"summary": summary,
            "parameters": [{"name": "batch_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "JSON"}, "404": _error("Not a dead batch (not_dead)"),
                          "401": _error("No or unknown bearer token")}}


def document(version: str) -> dict[str, Any]:
    batch = {"type": ["object", "null"], "required": ["id", "reason", "size", "discarded"], "properties": {
        "id": {"type": "string"}, "reason": {"enum": ["count", "expired"]},
        "size": {"type": "integer"}, "discarded": {"type": "boolean"}}}
    event = {"type": "object", "additionalProperties": True,
             "description": "The event payload: any JSON object; the binding's batch.key reads its "
                            "partition key from it"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "distbatch HTTP ingest", "version": version,
                 "description": "Emit events to a distbatch namespace from any language. Every route "
                                "but /healthz, /openapi.json and the dashboard's page (/, which holds "
                                "no data: its data routes do) needs Authorization: Bearer <token>."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string", "description": "Stable; match on it"},
                    "message": {"type": "string"},
                    "event": {"type": "integer", "description": "Index of the event at fault"},
                    "line": {"type": "integer", "description": "NDJSON line at fault"},
                    "limit": {"type": "integer"}}},
                "Result": {"type": "object", "required": ["event", "binding", "partition_key", "batch",
                                                          "expired", "overflowed"], "properties": {
                    "event": {"type": "integer", "description": "Index of the event in the request"},
                    "binding": {"type": "string", "description": "id@version"},
                    "partition_key": {"type": ["string", "null"]},
                    "batch": {**batch, "description": "The batch this event completed, if any"},
                    "expired": {**batch, "description": "An expired buffer this event closed"},
                    "overflowed": {"type": "integer"}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/sources/{source}/events": {"post": {
                "summary": "Emit events to a source",
                "description": "One JSON object, a JSON array of objects, or NDJSON (one object per "
                               "line). All or nothing: if any event is invalid nothing is stored.",
                "parameters": [
                    {"name": "source", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:/\\-]{1,200}$"}},
                    {"name": "results", "in": "query", "required": False,
                     "schema": {"enum": ["all", "cuts"]},
                     "description": "`cuts`: only results that cut, closed or overflowed a buffer"},
                    {"name": "Idempotency-Key", "in": "header", "required": False,
                     "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
                     "description": "A retry with the same key (same source, query, content type and "
                                    "body) gets the first response back, its events stored once (kept "
                                    "a day)"}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"oneOf": [event, {"type": "array", "items": event}]}},
                    "application/x-ndjson": {"schema": {"type": "string"}}}},
                "responses": {
                    "200": {"description": "Stored; one result per event and binding",
                            "content": {"application/json": {"schema": {
                                "type": "object", "required": ["events", "results"], "properties": {
                                    "events": {"type": "integer"},
                                    "results": {"type": "array",
                                                "items": {"$ref": "#/components/schemas/Result"}}}}}}},
                    "400": _error("Malformed JSON (invalid_json), an unknown query parameter "
                                  "(query_invalid), a bad results value (results_invalid), a bad "
                                  "Idempotency-Key (idempotency_key_invalid), a header given twice "
                                  "that a request carries once (header_repeated), or bad configuration"),
                    "401": _error("No or unknown bearer token (auth_missing, auth_invalid)"),
                    "403": _error("Without auth (--insecure-no-auth): a request from off this machine "
                                  "or a browser page of another origin (not_local)"),
                    "404": _error("No trigger is bound to this source (code source_unbound)"),
                    "408": _error("The body took longer than --body-timeout to arrive (code body_timeout)"),
                    "409": _error("The first request with this Idempotency-Key is still being stored "
                                  "(code idempotency_key_in_flight)"),
                    "405": _error("Another method than POST (method_not_allowed)"),
                    "413": _error("Body, event or event count above its limit"),
                    "415": _error("Content type not JSON or NDJSON"),
                    "422": _error("An event is not an object, cannot be encoded, or has no readable "
                                  "partition key; or an Idempotency-Key sent with another body"),
                    "431": _error("Request head above 64 KiB (head_too_large; the connection is "
                                  "closed)"),
                    "500": _error("An unexpected error (internal_error): events of the request may "
                                  "have been stored; an Idempotency-Key replays this answer"),
                    "503": _error("Redis unreachable, refused the request (code redis_refused), or "
                                  "failed part-way (stored / uncertain / not_sent say which events "
                                  "were stored); or more connections at once than the server takes "
                                  "(too_many_connections: nothing was read)"),
                }}},
            "/metrics": {"get": {"summary": "Prometheus metrics of the namespace",
                                 "responses": {"200": {"description": "Prometheus text format",
                                                       "content": {"text/plain": {}}},
                                               "401": _error("No or unknown bearer token")}}},
            "/api/overview": {"get": {"summary": "The dashboard's data: counts, rates, bindings",
                                      "responses": {"200": {"description": "JSON"},
                                                    "401": _error("No or unknown bearer token")}}},
            "/api/dead": {"get": {"summary": "Dead batches, newest first",
                                  "responses": {"200": {"description": "JSON"},
                                                "401": _error("No or unknown bearer token")}}},
            "/api/dead/{batch_id}": {"get": _dead("One dead batch, its events and whole error")},
            "/api/dead/{batch_id}/replay": {"post": _dead("Run a dead batch again")},
            "/api/dead/{batch_id}/purge": {"post": _dead("Delete a dead batch and its events")},
            "/healthz": {"get": {
                "summary": "Redis reachable; sweepers and workers seen lately", "security": [],
                "parameters": [{"name": "strict", "in": "query", "required": False,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "ok or degraded"},
                              "503": {"description": "Redis unreachable (or degraded with strict=1)"}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)
