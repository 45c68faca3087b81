"""What `distbatch stats` shows: read-only, bounded work per binding."""

from __future__ import annotations

from typing import Any

from .batcher import Batcher

SAMPLE = 10_000


def collect(batcher: Batcher) -> dict[str, Any]:
    b, k = batcher, batcher.keys
    bindings = b.bindings()
    counters: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for raw, value in b.client.hgetall(k.stats).items():
        name, _, binding = raw.decode().partition(":")
        if binding:
            counters.setdefault(binding, {})[name] = int(value)
        else:
            totals[name] = int(value)
    per_binding = {}
    for key in sorted(set(bindings) | set(counters)):
        members = b.client.srandmember(k.open_buffers(key), SAMPLE) or []
        scores = b.client.zmscore(k.deadlines, members) if members else []
        open_count = b.client.scard(k.open_buffers(key))
        per_binding[key] = {
            "registered": key in bindings,
            "source": bindings[key].source if key in bindings else None,
            "handler": bindings[key].handler if key in bindings else None,
            "open_buffers": open_count,
            "oldest_deadline_ms": int(min(s for s in scores if s is not None)) if any(
                s is not None for s in scores) else None,
            **counters.get(key, {}),
        }
    pipe = b.client.pipeline(transaction=False)
    for name in (k.ready, k.running, k.dead):
        pipe.zcard(name)
    pipe.time()
    ready, running, dead, (sec, usec) = pipe.execute()
    return {
        "namespace": k.namespace,
        "server_time_ms": sec * 1000 + usec // 1000,
        "ready_batches": ready,
        "running_batches": running,
        "dead_batches": dead,
        **totals,
        "bindings": per_binding,
    }
