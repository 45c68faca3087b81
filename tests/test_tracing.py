"""Trace links: events carry W3C trace contexts, the batch exposes them, and an OpenTelemetry span
wraps each handler run with a link to every one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from distbatch import Batch, Batcher
from distbatch.executor import Executor, Status
from distbatch.handlers import HandlerResolver
from distbatch.testing import RedisServer

from .test_serve import TOKEN, Server

T1 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
T2 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ran: list[Batch] = []


def ok(batch: Batch) -> None:
    ran.append(batch)


def fails(batch: Batch) -> None:
    raise RuntimeError("nope")


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter


def test_a_handler_span_links_to_every_event_trace(batcher: Batcher, spans: InMemorySpanExporter) -> None:
    spans.clear()
    batcher.register("t", version="v1", source="s", handler=f"{__name__}.ok",
                     batch={"count": 4, "window": "1h"})
    results = batcher.emit_many("s", [{"traceparent": T1}, {"n": 1}, {"traceparent": T2},
                                      {"traceparent": "00-not-a-trace"}])
    batch = results[-1].batch
    assert batch is not None and batch.trace_contexts == [T1, T2]
    assert [e.traceparent for e in batch.events] == [T1, None, T2, None]
    claim = batcher.records.claim([batch.id], 10_000)
    assert claim is not None and claim.batch.trace_contexts == [T1, T2]
    assert Executor(batcher.records, HandlerResolver([__name__])).run(claim).status == Status.DELIVERED
    (span,) = spans.get_finished_spans()
    assert span.name == "distbatch.batch t@v1" and span.kind == trace.SpanKind.CONSUMER
    assert [format(link.context.trace_id, "032x") for link in span.links] == [T1[3:35], T2[3:35]]
    assert span.attributes is not None and span.attributes["distbatch.batch.id"] == batch.id
    assert span.attributes["messaging.batch.message_count"] == 4


def test_a_failing_handler_span_is_an_error(batcher: Batcher, spans: InMemorySpanExporter) -> None:
    spans.clear()
    batcher.register("f", version="v1", source="s", handler=f"{__name__}.fails",
                     batch={"count": 1, "window": "1h"})
    (r,) = batcher.emit("s", {"traceparent": T1})
    assert r.batch is not None
    claim = batcher.records.claim([r.batch.id], 10_000)
    assert claim is not None
    assert Executor(batcher.records, HandlerResolver([__name__])).run(claim).status == Status.RETRY
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR and span.events[0].name == "exception"


def test_http_events_take_the_request_trace_context(redis_server: RedisServer, namespace: str,
                                                    tmp_path: Path) -> None:
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("h", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h"})
    server = Server(redis_server.url, tmp_path, namespace)
    try:
        r = httpx.post(f"{server.url}/v1/sources/s/events", json=[{"n": 0}, {"n": 1, "traceparent": T2}],
                       headers={"Authorization": f"Bearer {TOKEN}", "traceparent": T1})
        assert r.status_code == 200, r.text
        batch_id = r.json()["results"][1]["batch"]["id"]
    finally:
        server.stop()
    assert b.records.get_batch(batch_id).trace_contexts == [T1, T2]
