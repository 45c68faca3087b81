"""The serve process's sync view of its namespace: stats, dead batches, replay and purge, for
/metrics and the dashboard. Records and stats are sync code; routes call this in worker threads
(`asyncio.to_thread`), never on the event loop."""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from .. import dead, stats
from ..batcher import Batcher
from ..metrics import namespace_registry
from .settings import ServeSettings

HISTORY = 300  # samples, one every SAMPLE_EVERY_S: ten minutes
SAMPLE_EVERY_S = 2.0


class Inspector:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._batcher: Batcher | None = None
        self._registry: CollectorRegistry | None = None
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)

    def batcher(self) -> Batcher:
        with self._lock:
            if self._batcher is None:
                s = self.settings
                self._batcher = Batcher.from_url(s.redis_url, namespace=s.namespace, queue_url=s.queue_url,
                                                 fix_layout=False)
            return self._batcher

    def metrics(self) -> bytes:
        """The namespace's metrics (read from Redis now) and this process's own."""
        if self._registry is None:
            self._registry = namespace_registry(self.batcher())
        return generate_latest(self._registry) + generate_latest(REGISTRY)

    def sample(self) -> None:
        """One point of the rate charts: the totals now (rates are differences of these). Cheap
        reads only (counters, set sizes): it runs every SAMPLE_EVERY_S."""
        b = self.batcher()
        counters = b.counters()

        def total(prefix: str) -> int:
            return sum(v for k, v in counters.items() if k.startswith(prefix))

        self.history.append({
            "t": b.server_ms(), "events_in": total("events_in:"),
            "events_delivered": total("events_delivered:"),
            "batches_cut": total("batches_count:") + total("batches_expired:"),
            "dead": b.records.count("dead"), "ready": b.records.count("ready"),
        })

    def overview(self) -> dict[str, Any]:
        b = self.batcher()
        data = stats.collect(b)
        definitions = b.bindings()
        for key, row in data["bindings"].items():
            d = definitions.get(key)
            row["config"] = None if d is None else {
                "count": d.batch.count, "window_ms": d.batch.window_ms, "key": d.batch.key,
                "expire_action": d.batch.expire_action, "attempts": d.retry.attempts}
            row["top_buffers"] = stats.top_buffers(b, key) if d is not None else []
        data["rates"] = _rates(list(self.history))
        data["lateness"] = stats.lateness(b, data["server_time_ms"])
        return data

    def misfiled_hint(self, exc: BaseException) -> str:
        """The keys behind a WRONGTYPE, as the CLI names them (`Records.misfiled_hint`)."""
        try:
            return self.batcher().records.misfiled_hint(exc)
        except Exception:  # only a better word on an error said anyway
            return ""

    def dead(self, limit: int = 200) -> list[dict[str, Any]]:
        return dead.rows(self.batcher(), limit)

    def dead_detail(self, batch_id: str) -> dict[str, Any] | None:
        return dead.detail(self.batcher(), batch_id)

    def replay(self, batch_id: str) -> bool:
        b = self.batcher()
        ok = b.records.replay(batch_id)
        if ok and b.dispatcher is not None:
            b.dispatcher([batch_id])  # wake a worker for it now
        return ok

    def purge(self, batch_id: str) -> bool:
        return self.batcher().records.purge(batch_id)


def _rates(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for prev, cur in itertools.pairwise(history):
        dt = (cur["t"] - prev["t"]) / 1000
        if dt <= 0:
            continue
        out.append({"t": cur["t"], **{f"{k}_per_s": max(0.0, (cur[k] - prev[k]) / dt)
                                      for k in ("events_in", "events_delivered", "batches_cut")},
                    "dead": cur["dead"], "ready": cur["ready"]})
    return out


