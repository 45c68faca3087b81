"""What `distbatch stats` shows: read-only, bounded work per binding."""

from __future__ import annotations

import math
from typing import Any

from . import census
from .batcher import Batcher
from .codec import as_text
from .keys import SEEN_LIVE_MS, split_member

SAMPLE = 10_000
_TOTALS = {"batches_dead": "went_dead_total", "batch_retries": "retries_total",
           "batches_given_back": "given_back_total", "leases_expired": "leases_expired_total"}
PER_BINDING = ("events_in", "events_delivered", "events_discarded", "events_overflowed", "events_dropped",
               "events_purged", "batches_count", "batches_expired", "batches_discarded",
               "batches_delivered")
"""The counters the scripts keep per binding (`<name>:<binding>` in the stats hash): each one in
`--json` from the start, at 0 until it moves, so a reader finds every field (it found a new
binding without `events_in_total`, and no `retries_total` before a first retry)."""


def collect(batcher: Batcher, events: bool = False) -> dict[str, Any]:
    """Counters are totals since the namespace began (summed over shards); `*_now` are current.
    `events`: also count the events inside each binding and check its books (`census`)."""
    b = batcher
    bindings = b.bindings()
    counters: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = dict.fromkeys(_TOTALS.values(), 0)
    for full, count in b.counters().items():  # summed over shards; a hostile writer's junk left out
        name, _, binding = full.partition(":")
        if count < 0:  # no counter of distbatch's goes down: a negative one is no Prometheus counter
            continue
        bucket = counters.setdefault(binding, {}) if binding else totals
        label = f"{name}_total" if binding else _TOTALS.get(name, f"{name}_total")
        bucket[label] = bucket.get(label, 0) + count
    sizes = {which: b.records.count(which) for which in ("ready", "running", "delayed", "dead")}
    now_ms = b.server_ms()
    # The earliest deadlines in order: each binding's first among them is its next close, exact
    # (a sample of its buffers alone missed the earliest among 40,000 by seconds). Finite scores
    # only: a hostile writer's +-inf made every reader of them fail.
    earliest: dict[bytes, float] = {}
    for k in b.shards:
        rows: list[tuple[bytes, float]] = b.client.zrangebyscore(  # type: ignore[assignment]
            k.deadlines, "(-inf", "(+inf", start=0, num=SAMPLE, withscores=True)
        for m, score in rows:
            owner = m.partition(b"|")[0]
            earliest[owner] = min(score, earliest.get(owner, score))
    oldest = min(earliest.values(), default=None)
    window_now = b.clock.now_ms()  # deadlines are on the window clock (a ManualClock in tests)
    window_ms = now_ms if window_now is None else window_now  # a ManualClock at 0 is a time
    sweepers = int(b.client.zcount(b.keys.sweepers, now_ms - SEEN_LIVE_MS, "+inf"))
    per_binding = {}
    # Every binding's reads go in one pipeline per step, not a round trip each: a dropped
    # binding keeps its counters (and a row) for good, and at one round trip per read a scrape
    # of 2,000 dropped versions took 1.4 s (a review's run), toward Prometheus' 10 s timeout.
    dropped = b.records.bindings_of(sorted(set(counters) - set(bindings)))  # kept for their batches
    keys = sorted(set(bindings) | {key for key, d in dropped.items() if d is not None})
    per_shard = [(key, k) for key in keys for k in b.shards]
    pipe = b.client.pipeline(transaction=False)
    for key, k in per_shard:
        pipe.scard(k.open_buffers(key))
    open_counts = dict.fromkeys(keys, 0)
    for (key, _), n in zip(per_shard, pipe.execute() if per_shard else [], strict=True):
        open_counts[key] += int(n)
    # none of its buffers among the earliest read: a sample of them, a step for each read
    unseen = [(key, k) for key, k in per_shard
              if earliest.get(key.encode("utf-8", "surrogateescape")) is None and open_counts[key]]
    pipe = b.client.pipeline(transaction=False)
    for key, k in unseen:
        pipe.srandmember(k.open_buffers(key), SAMPLE)
    samples = [list(m or []) for m in (pipe.execute() if unseen else [])]
    pipe = b.client.pipeline(transaction=False)
    for (_, k), members in zip(unseen, samples, strict=True):
        if members:
            pipe.zmscore(k.deadlines, members)
    found = iter(pipe.execute() if any(samples) else [])
    sampled: dict[str, list[float]] = {}
    for (key, _), members in zip(unseen, samples, strict=True):
        scores = next(found) if members else []
        sampled.setdefault(key, []).extend(x for x in scores if x is not None and math.isfinite(x))
    for key in keys:
        # counters of no binding registered or dropped (a hostile writer's `events_in:<anything>`)
        # are left out: each made a "(dropped)" row and a dozen metric series, and went to the
        # terminal as written
        first = earliest.get(key.encode("utf-8", "surrogateescape"))
        scores = [first] if first is not None else sampled.get(key, [])
        defined = bindings.get(key) or dropped.get(key)
        per_binding[key] = {
            "registered": key in bindings,
            "source": defined.source if defined else None,
            "handler": defined.handler if defined else None,
            "open_buffers_now": open_counts[key],
            "next_window_closes_in_ms": int(min(scores)) - window_ms if scores else None,
            **{f"{name}_total": 0 for name in PER_BINDING},
            **counters.get(key, {}),
        }
    if events:
        for key, inside in census.count(b, list(per_binding)).items():
            per_binding[key].update(census.balance(per_binding[key], inside))
    return {
        "namespace": b.keys.namespace,
        "shards": b.layout.count,
        "server_time_ms": now_ms,
        "batches_ready_now": sizes["ready"],
        "batches_running_now": sizes["running"],
        "batches_waiting_retry_now": sizes["delayed"],
        "batches_dead_now": sizes["dead"],
        "oldest_overdue_ms": 0 if oldest is None else max(0, window_ms - int(oldest)),
        "sweepers_live": sweepers,
        **totals,
        "bindings": per_binding,
    }


def render(data: dict[str, Any]) -> str:
    """The human view: one block for the namespace, one line per binding."""
    lines = [
        f"namespace {data['namespace']}: batches ready {data['batches_ready_now']}, running "
        f"{data['batches_running_now']}, waiting retry {data['batches_waiting_retry_now']}, dead "
        f"{data['batches_dead_now']}; retries {data.get('retries_total', 0)}, given back "
        f"{data.get('given_back_total', 0)}, leases expired "
        f"{data.get('leases_expired_total', 0)}, went dead {data.get('went_dead_total', 0)} (totals)",
        f"  sweepers live {data['sweepers_live']}"
        + (f"; a window overdue by {data['oldest_overdue_ms'] / 1000:.1f}s (no sweeper cut it: is one "
           "running?)" if data["oldest_overdue_ms"] > 1000 else "; no window overdue"),
    ]
    for key, row in data["bindings"].items():
        closes = row["next_window_closes_in_ms"]
        close = ("-" if closes is None else f"{closes / 1000:.1f}s" if closes >= 0
                 else f"overdue {-closes / 1000:.1f}s")
        lines.append(
            f"  {key:<24} {'' if row['registered'] else '(dropped) '}source={row['source']} "
            f"open={row['open_buffers_now']} next_close="
            f"{close} "
            f"in={row.get('events_in_total', 0)} delivered={row.get('events_delivered_total', 0)} "
            f"discarded={row.get('events_discarded_total', 0)} "
            f"overflowed={row.get('events_overflowed_total', 0)} "
            f"dropped={row.get('events_dropped_total', 0)} "
            f"purged={row.get('events_purged_total', 0)} "
            f"batches: count={row.get('batches_count_total', 0)} "
            f"expired={row.get('batches_expired_total', 0)}"
            + (f" buffered={row['events_buffered_now']} in_batches={row['events_in_batches_now']} "
               f"unaccounted={row['events_unaccounted']}" if "events_unaccounted" in row else "")
        )
    return "\n".join(lines)


def top_buffers(batcher: Batcher, binding: str, n: int = 5, sample: int = 200) -> list[dict[str, Any]]:
    """The biggest open buffers of a binding (from a sample of `sample` per shard): partition key,
    events, and how long ago its window opened. Bounded work, whatever the number of buffers."""
    b = batcher
    definition = b.binding(binding)
    window = definition.batch.window_ms if definition is not None else 0
    manual = b.clock.now_ms()
    now = b.server_ms() if manual is None else manual  # a ManualClock at 0 is a time
    rows: list[dict[str, Any]] = []
    for k in b.shards:
        members: list[Any] = list(b.client.srandmember(k.open_buffers(binding), sample) or [])
        if not members:
            continue
        pipe = b.client.pipeline(transaction=False)
        prefix = k.buffer_prefix.encode()
        for m in members:
            pipe.llen(prefix + m)
        pipe.zmscore(k.deadlines, members)
        *sizes, deadlines = pipe.execute()
        for m, size, deadline in zip(members, sizes, deadlines, strict=True):
            if deadline is None or not math.isfinite(deadline):
                continue
            _, partition = split_member(as_text(m, "surrogateescape"))
            rows.append({"partition_key": partition, "events": int(size),
                         "age_ms": max(0, now - (int(deadline) - window)),
                         "closes_in_ms": int(deadline) - now})
    rows.sort(key=lambda r: (-r["events"], -r["age_ms"]))
    return rows[:n]


LATENESS_WINDOW_MS = 600_000
LATENESS_KEPT = 2000
"""Cuts the sweepers keep in `{ns}:lateness` (newest first): at more than ~3 cuts a second, less
than the ten minutes the chart spans."""


def lateness(batcher: Batcher, now_ms: int) -> dict[str, Any]:
    """Cut lateness the sweepers recorded: p50/p99/max per 10 s over the last ten minutes, and
    the last minute's p50/p99. `since_ms`: the oldest cut they stand for; later than ten minutes
    (or the minute) ago when more cuts came than are kept (`complete` false)."""
    raw: list[bytes] = batcher.client.lrange(batcher.keys.lateness, 0, -1)  # type: ignore[assignment]
    points: list[tuple[int, int]] = []
    for item in raw:
        try:
            at_s, late_s = item.split()
            at, late = int(at_s), int(late_s)
        except ValueError:  # not a sweeper's "<ms> <ms>" (a hostile writer's): skipped, as junk elsewhere
            continue
        if now_ms - at <= LATENESS_WINDOW_MS:
            points.append((at, late))
    buckets: dict[int, list[int]] = {}
    for at, late in points:
        buckets.setdefault(at // 10_000 * 10_000, []).append(late)
    series = [{"t": t, "p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": max(v), "n": len(v)}
              for t, v in sorted(buckets.items())]
    recent = [late for at, late in points if now_ms - at <= 60_000]
    return {"series": series, "last_minute": {"n": len(recent), "p50": pct(recent, 0.5),
                                              "p99": pct(recent, 0.99)},
            "since_ms": min((at for at, _ in points), default=None), "complete": len(raw) < LATENESS_KEPT}


def pct(values: list[int], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
