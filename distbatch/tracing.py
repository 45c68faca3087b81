"""OpenTelemetry around each handler run, when `opentelemetry-api` is installed (the `otel`
extra): one CONSUMER span per batch, linked to the trace context of every event in it (a batch
joins many traces, so links, not a parent). Without the package it costs nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .models import Batch

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    _NO_SDK: tuple[type, ...] = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
except ImportError:  # the extra is not installed
    trace = None  # type: ignore[assignment]

MAX_LINKS = 128  # a span's links are capped by most SDKs anyway; the first events' contexts


def _links(batch: Batch) -> list[Any]:
    propagator = TraceContextTextMapPropagator()
    links = []
    for tp in batch.trace_contexts[:MAX_LINKS]:
        ctx = trace.get_current_span(propagator.extract({"traceparent": tp})).get_span_context()
        if ctx.is_valid:
            links.append(trace.Link(ctx))
    return links


@contextlib.contextmanager
def handler_span(batch: Batch) -> Iterator[None]:
    """The span of one handler run (errors are recorded on it by OpenTelemetry itself)."""
    if trace is None or isinstance(trace.get_tracer_provider(), _NO_SDK):
        yield  # no SDK set up: spans would be no-ops, and their links cost a regex per event
        return
    tracer = trace.get_tracer("distbatch")
    with tracer.start_as_current_span(
        f"distbatch.batch {batch.binding}", kind=trace.SpanKind.CONSUMER, links=_links(batch),
        attributes={"distbatch.batch.id": batch.id, "distbatch.binding": batch.binding,
                    "distbatch.batch.reason": batch.reason, "distbatch.batch.attempt": batch.attempt,
                    "messaging.batch.message_count": len(batch.events)},
    ):
        yield
