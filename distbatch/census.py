"""Where every event of a binding is now, counted one by one (`distbatch stats --events`).

The counters say how many events came in and how many left (delivered, discarded, overflowed,
dropped, purged); what is still inside is counted here from the data itself: the events in each
open buffer, and in each batch record (ready, running, waiting for a retry, dead). So the books
can be checked: `unaccounted` = in − left − buffered − in batches is 0 when they balance. It
reads every open buffer's length and every batch record: O(open buffers + batches), in chunks
(SSCAN, HSCAN, pipelined LLEN), never one big reply. Counted while events flow, a buffer cut
between its count and the records' is seen twice or not at all: exact when the namespace is at
rest, close otherwise.
"""

from __future__ import annotations

from typing import Any

from .batcher import Batcher
from .records import info_fields

CHUNK = 1000
LEFT = ("events_delivered_total", "events_discarded_total", "events_overflowed_total",
        "events_dropped_total", "events_purged_total")
"""The counters of events that left a binding's books, as `stats.collect` names them."""


def count(batcher: Batcher, bindings: list[str]) -> dict[str, dict[str, int]]:
    """Per binding: events in its open buffers and in its batch records, summed over shards."""
    out = {key: {"events_buffered_now": 0, "events_in_batches_now": 0} for key in bindings}
    client = batcher.client
    for k in batcher.shards:
        for key in bindings:
            members: list[bytes] = []
            for member in client.sscan_iter(k.open_buffers(key), count=CHUNK):
                members.append(member)
                if len(members) >= CHUNK:
                    out[key]["events_buffered_now"] += _lengths(client, k.buffer_prefix, members)
                    members = []
            out[key]["events_buffered_now"] += _lengths(client, k.buffer_prefix, members)
        for _, info in client.hscan_iter(k.rec_info, count=CHUNK):
            member, _, _, n = info_fields(info)
            binding = member.partition("|")[0]
            if binding in out and n.isdigit():  # a hostile writer's record counts nowhere
                out[binding]["events_in_batches_now"] += int(n)
    return out


def _lengths(client: Any, prefix: str, members: list[bytes]) -> int:
    if not members:
        return 0
    pipe = client.pipeline(transaction=False)
    for m in members:
        pipe.llen(prefix.encode() + m)
    return sum(int(n) for n in pipe.execute())


def balance(row: dict[str, Any], census: dict[str, int]) -> dict[str, int]:
    """`census` and what the books leave unaccounted for (0 when they balance)."""
    left = sum(int(row.get(name, 0)) for name in LEFT)
    inside = census["events_buffered_now"] + census["events_in_batches_now"]
    return {**census, "events_unaccounted": int(row.get("events_in_total", 0)) - left - inside}
