"""Prometheus metrics.

Two kinds, so nothing is counted twice:

- **Namespace metrics** (`NamespaceCollector`): the counters that live in Redis (events in, batches
  cut, delivered, dead, ...) and the current state (open buffers, batches ready/running/dead, the
  oldest overdue window), read from Redis at scrape time. `distbatch serve` exposes them at
  `/metrics`; every serve instance reports the same totals, so aggregate them with `max`, never
  `sum`.
- **Process metrics** (the histograms and counters below): what one worker, sweeper or batcher
  process observed (cut lateness, cut -> handler start, handler duration, batch size, leases
  lost, hand-off tickets). `--metrics-port` of `worker` and `sweeper` exposes them; `sum` them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from .exposure import bearer_ok, local_only_refusal

_LATE = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DURATION = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CUT_LATENESS = Histogram(
    "distbatch_cut_lateness_seconds", "How long after its window's deadline a sweeper cut a buffer",
    buckets=_LATE)
HANDLER_START_DELAY = Histogram(
    "distbatch_handler_start_delay_seconds",
    "From a batch's cut (Redis clock) to its handler starting (this host's clock), first attempts",
    ["binding"], buckets=_LATE)
HANDLER_DURATION = Histogram(
    "distbatch_handler_duration_seconds", "Handler run time", ["binding"], buckets=_DURATION)
BATCH_SIZE = Histogram(
    "distbatch_batch_size_events", "Events per batch handed to a handler", ["binding"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1024))
HANDLER_RUNS = Counter(
    "distbatch_handler_runs_total", "Handler runs by outcome (delivered, retry, dead, unavailable, "
    "lease_lost, poison)", ["binding", "outcome"])
LEASES_LOST = Counter(
    "distbatch_leases_lost_total", "Batches this worker lost the lease of before finishing (outcome "
    "dropped; another worker runs them)")
HANDOFF_TICKETS = Counter(
    "distbatch_handoff_tickets_total", "RQ tickets enqueued to wake workers for ready batches")


OUTCOMES = ("delivered", "retry", "dead", "lease_lost", "unavailable", "poison")
LABELLED_IDLE_S = 3600.0
"""A binding's series this process has not observed for this long go (its next run starts them
again): a long-running worker kept ~50 series for every binding version it ever ran (5,087 series
and 477 KB a scrape after 100 versions, in a review's run), for good. By idleness, not by count:
a worker running more bindings than any count must never reset a live one's series (a count of
64 reset every series of a worker running 65 in turn, and `increase()` saw no run)."""
_labelled: OrderedDict[str, float] = OrderedDict()  # binding -> when last observed, oldest first
_labelled_lock = threading.Lock()
_monotonic = time.monotonic  # this module's clock (a test moves it alone)


def binding_label(binding: str) -> str:
    """`binding`, as the label of this process's per-binding series (`LABELLED_IDLE_S`)."""
    now = _monotonic()
    idle: list[str] = []
    with _labelled_lock:
        fresh = binding not in _labelled
        _labelled[binding] = now
        _labelled.move_to_end(binding)
        if fresh:  # a binding not seen lately: the ones idle past the limit go
            while _labelled:
                oldest, seen = next(iter(_labelled.items()))
                if now - seen <= LABELLED_IDLE_S:
                    break
                del _labelled[oldest]
                idle.append(oldest)
        for old in idle:  # under the lock: a binding labelled again meanwhile is not removed after
            for metric in (HANDLER_START_DELAY, HANDLER_DURATION, BATCH_SIZE):
                with contextlib.suppress(KeyError):
                    metric.remove(old)
            for outcome in OUTCOMES:
                with contextlib.suppress(KeyError):
                    HANDLER_RUNS.remove(old, outcome)
    return binding


def _family(kind: Any, name: str, doc: str, labels: Iterable[str] = ()) -> Any:
    return kind(name, doc, labels=list(labels))


class NamespaceCollector(Collector):
    """Reads one namespace's state from Redis at every scrape (`stats.collect`)."""

    def __init__(self, batcher: Any) -> None:
        self.batcher = batcher

    def collect(self) -> Iterator[Metric]:
        from .stats import collect

        data = collect(self.batcher)
        per = data["bindings"]
        counters = [
            ("distbatch_events", "Events accepted (per binding: one event emitted to a source with "
             "two bindings counts once for each)", "events_in_total"),
            ("distbatch_events_delivered", "Events in batches whose handler succeeded",
             "events_delivered_total"),
            ("distbatch_events_discarded", "Events in windows that ran out with expire_action=discard",
             "events_discarded_total"),
            ("distbatch_events_overflowed", "Oldest events dropped by the 1024-event buffer cap",
             "events_overflowed_total"),
            ("distbatch_events_dropped", "Events returned by drop() (binding removed)",
             "events_dropped_total"),
            ("distbatch_events_purged", "Events of dead batches deleted for good (dead purge)",
             "events_purged_total"),
            ("distbatch_batches_discarded", "Windows that ran out with expire_action=discard",
             "batches_discarded_total"),
            ("distbatch_batches_delivered", "Batches whose handler succeeded", "batches_delivered_total"),
        ]
        for name, doc, field in counters:
            family = _family(CounterMetricFamily, name, doc, ["binding"])
            for binding, row in per.items():
                family.add_metric([binding], row.get(field, 0))
            yield family
        cut = _family(CounterMetricFamily, "distbatch_batches_cut", "Batches cut, by reason (count: "
                      "full; expired: window ran out)", ["binding", "reason"])
        for binding, row in per.items():
            for reason in ("count", "expired"):
                cut.add_metric([binding, reason], row.get(f"batches_{reason}_total", 0))
        yield cut
        for name, doc, field in (
            ("distbatch_batch_retries", "Failed handler runs scheduled for another attempt",
             "retries_total"),
            ("distbatch_batches_given_back", "Batches given back unstarted, their try refunded (a round "
             "ran long or failed, or this worker cannot run the handler)", "given_back_total"),
            ("distbatch_batches_dead", "Batches that went dead (attempts exhausted or poison)",
             "went_dead_total"),
            ("distbatch_leases_expired", "Leases that ran out (worker killed or stalled); the sweeper "
             "took the batch back", "leases_expired_total"),
        ):
            family = _family(CounterMetricFamily, name, doc)
            family.add_metric([], data.get(field, 0))
            yield family
        buffers = _family(GaugeMetricFamily, "distbatch_open_buffers", "Buffers holding events now",
                          ["binding"])
        for binding, row in per.items():
            buffers.add_metric([binding], row["open_buffers_now"])
        yield buffers
        states = _family(GaugeMetricFamily, "distbatch_batches", "Batches now, by state", ["state"])
        for state, field in (("ready", "batches_ready_now"), ("running", "batches_running_now"),
                             ("delayed", "batches_waiting_retry_now"), ("dead", "batches_dead_now")):
            states.add_metric([state], data[field])
        yield states
        overdue = _family(GaugeMetricFamily, "distbatch_oldest_overdue_seconds",
                          "How far past its deadline the oldest still-open window is (0: none)")
        overdue.add_metric([], data["oldest_overdue_ms"] / 1000)
        yield overdue
        sweepers = _family(GaugeMetricFamily, "distbatch_sweepers_live",
                           "Sweepers seen in the last 10 s")
        sweepers.add_metric([], data["sweepers_live"])
        yield sweepers


def serve_process_metrics(host: str, port: int, tokens: frozenset[str]) -> ThreadingWSGIServer:
    """This process's metrics on http://host:port/metrics (a daemon thread), behind the same bearer
    tokens as `distbatch serve` when any are configured (the caller enforced loopback if none)."""
    app = make_wsgi_app()
    wanted = [t.encode() for t in tokens]

    def guarded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION", "").encode()
        if wanted and not bearer_ok(header, wanted):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Bearer realm="distbatch"'),
                                                ("Content-Type", "text/plain")])
            return [b"send Authorization: Bearer <token>\n"]
        if not wanted:  # no auth, on loopback: no page in the user's browser may read it either
            refusal = local_only_refusal({
                name: str(environ[key]).encode("latin-1", "replace")
                for name, key in ((b"host", "HTTP_HOST"), (b"origin", "HTTP_ORIGIN"),
                                  (b"sec-fetch-site", "HTTP_SEC_FETCH_SITE")) if key in environ})
            if refusal is not None:
                start_response("403 Forbidden", [("Content-Type", "text/plain")])
                return [f"not_local: {refusal}\n".encode()]
        result: Iterable[bytes] = app(environ, start_response)
        return result

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server(host, port, guarded, ThreadingWSGIServer, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True, name="distbatch-metrics").start()
    return server


def namespace_registry(batcher: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NamespaceCollector(batcher))
    return registry
