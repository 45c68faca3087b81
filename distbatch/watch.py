"""`distbatch stats --watch`: the namespace live in a terminal (rich), or one JSON line per tick."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .batcher import Batcher
from .stats import collect, lateness

RATES = (("events_in_total", "in/s"), ("events_delivered_total", "delivered/s"),
         ("batches_count_total", "cut count/s"), ("batches_expired_total", "cut expired/s"))


def snapshot(batcher: Batcher, previous: dict[str, Any] | None) -> dict[str, Any]:
    """`stats.collect` plus per-binding rates since `previous` and the recent cut lateness."""
    data = collect(batcher)
    data["lateness_last_minute_ms"] = lateness(batcher, data["server_time_ms"])["last_minute"]
    if previous is not None and (dt := (data["server_time_ms"] - previous["server_time_ms"]) / 1000) > 0:
        # (within one ms of the last read no rate is known: none is given, not a rate of 0)
        for key, row in data["bindings"].items():
            before = previous["bindings"].get(key, {})
            for field, _ in RATES:
                rate = (row.get(field, 0) - before.get(field, 0)) / dt
                row[field.replace("_total", "_per_s")] = round(max(0.0, rate), 1)
    return data


def view(data: dict[str, Any]) -> Group:
    late = data["lateness_last_minute_ms"]
    head = Text.assemble(
        (f"namespace {data['namespace']}", "bold"), f"  {data['shards']} shard(s)  ",
        f"ready {data['batches_ready_now']}  running {data['batches_running_now']}  "
        f"waiting retry {data['batches_waiting_retry_now']}  ",
        (f"dead {data['batches_dead_now']}", "bold red" if data["batches_dead_now"] else ""),
        f"  oldest overdue {data['oldest_overdue_ms']} ms  sweepers {data['sweepers_live']}  "
        f"cut lateness 1 min p50/p99 {late['p50'] if late['p50'] is not None else '-'}/"
        f"{late['p99'] if late['p99'] is not None else '-'} ms",
    )
    table = Table(expand=True)
    for col in ("binding", "open", *(label for _, label in RATES), "in total", "delivered total"):
        table.add_column(col, justify="left" if col == "binding" else "right")
    for key, row in data["bindings"].items():
        table.add_row(key + ("" if row["registered"] else " (dropped)"), str(row["open_buffers_now"]),
                      *(_rate(row.get(f.replace("_total", "_per_s"))) for f, _ in RATES),
                      f"{row.get('events_in_total', 0):,}", f"{row.get('events_delivered_total', 0):,}")
    return Group(head, table)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"  # none known on the first read


def watch(batcher: Batcher, interval_s: float, count: int | None, as_json: bool,
          echo: Callable[[str], None], sleep: Callable[[float], None] = time.sleep) -> None:
    """Until interrupted (or `count` ticks): refresh every `interval_s`."""
    previous: dict[str, Any] | None = None
    ticks = 0
    live = None if as_json else Live(auto_refresh=False, transient=False)
    try:
        if live is not None:
            live.start()
        while count is None or ticks < count:
            data = snapshot(batcher, previous)
            if live is None:
                echo(json.dumps(data, separators=(",", ":")))
            else:
                live.update(view(data), refresh=True)
            previous, ticks = data, ticks + 1
            if count is None or ticks < count:
                sleep(interval_s)
    finally:
        if live is not None:
            live.stop()
