"""What `distbatch stats` shows: read-only, bounded work per binding."""

from __future__ import annotations

from typing import Any

from .batcher import Batcher
from .codec import as_text

SAMPLE = 10_000
_TOTALS = {"batches_dead": "went_dead_total", "batch_retries": "retries_total",
           "leases_expired": "leases_expired_total"}


def collect(batcher: Batcher) -> dict[str, Any]:
    """Counters are totals since the namespace began; `*_now` are current sizes."""
    b, k = batcher, batcher.keys
    bindings = b.bindings()
    counters: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for raw, value in b.client.hgetall(k.stats).items():
        name, _, binding = as_text(raw).partition(":")
        if binding:
            counters.setdefault(binding, {})[f"{name}_total"] = int(value)
        else:
            totals[_TOTALS.get(name, f"{name}_total")] = int(value)
    pipe = b.client.pipeline(transaction=False)
    for name in (k.ready, k.running, k.delayed, k.dead):
        pipe.zcard(name)
    pipe.time()
    ready, running, delayed, dead, (sec, usec) = pipe.execute()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    per_binding = {}
    for key in sorted(set(bindings) | set(counters)):
        members: list[Any] = list(b.client.srandmember(k.open_buffers(key), SAMPLE) or [])
        scores = [s for s in (b.client.zmscore(k.deadlines, members) if members else []) if s is not None]
        per_binding[key] = {
            "registered": key in bindings,
            "source": bindings[key].source if key in bindings else None,
            "handler": bindings[key].handler if key in bindings else None,
            "open_buffers_now": b.client.scard(k.open_buffers(key)),
            "next_window_closes_in_ms": int(min(scores)) - now_ms if scores else None,
            **counters.get(key, {}),
        }
    return {
        "namespace": k.namespace,
        "server_time_ms": now_ms,
        "batches_ready_now": ready,
        "batches_running_now": running,
        "batches_waiting_retry_now": delayed,
        "batches_dead_now": dead,
        **totals,
        "bindings": per_binding,
    }


def render(data: dict[str, Any]) -> str:
    """The human view: one block for the namespace, one line per binding."""
    lines = [
        f"namespace {data['namespace']}: batches ready {data['batches_ready_now']}, running "
        f"{data['batches_running_now']}, waiting retry {data['batches_waiting_retry_now']}, dead "
        f"{data['batches_dead_now']}; retries {data.get('retries_total', 0)}, leases expired "
        f"{data.get('leases_expired_total', 0)}, went dead {data.get('went_dead_total', 0)} (totals)",
    ]
    for key, row in data["bindings"].items():
        closes = row["next_window_closes_in_ms"]
        lines.append(
            f"  {key:<24} {'' if row['registered'] else '(dropped) '}source={row['source']} "
            f"open={row['open_buffers_now']} next_close="
            f"{'-' if closes is None else f'{closes / 1000:.1f}s'} "
            f"in={row.get('events_in_total', 0)} delivered={row.get('events_delivered_total', 0)} "
            f"discarded={row.get('events_discarded_total', 0)} "
            f"overflowed={row.get('events_overflowed_total', 0)} "
            f"batches: count={row.get('batches_count_total', 0)} "
            f"expired={row.get('batches_expired_total', 0)}"
        )
    return "\n".join(lines)
