"""Dead batches as people look at them (`distbatch dead ...`, the dashboard): never crash on a
poison record, always say what is wrong with it."""

from __future__ import annotations

import math
from typing import Any

from .batcher import Batcher
from .codec import as_text
from .errors import BatchNotFound


def _ms(score: float) -> int | None:
    """A dead set's score as ms; None for +-inf (a hostile writer's), which no int holds."""
    return int(score) if math.isfinite(score) else None


def row(batcher: Batcher, batch_id: str, when: int | None) -> dict[str, Any]:
    raw = batcher.records.raw(batch_id)
    return {"id": batch_id, "binding": raw["binding"], "partition_key": raw["partition_key"],
            "events": raw.get("n"), "attempts": raw.get("attempt"),  # None: a garbled record's
            "reason": raw.get("reason"), "dead_at_ms": when, "error": raw.get("error")}


def rows(batcher: Batcher, limit: int | None = None) -> list[dict[str, Any]]:
    """Newest first, with the whole traceback of each (records gone meanwhile are skipped)."""
    found: list[tuple[Any, float]] = []
    for k in batcher.shards:
        found += batcher.client.zrange(k.dead, 0, -1 if limit is None else limit - 1, desc=True,  # type: ignore[arg-type]
                                       withscores=True)
    found.sort(key=lambda x: -x[1])
    out = []
    for bid, when in found[:limit]:
        try:
            out.append(row(batcher, as_text(bid), _ms(when)))
        except BatchNotFound:
            continue
        except UnicodeDecodeError:  # no batch id (those are text): a hostile writer's member, listed
            out.append({"id": as_text(bid, "replace"), "dead_at_ms": _ms(when),  # as such, never raised
                        "error": "not a batch id (not written by distbatch)"})
    return out


def detail(batcher: Batcher, batch_id: str) -> dict[str, Any] | None:
    """One dead batch in full, events included (or why they cannot be decoded); None if not dead."""
    try:
        when = batcher.client.zscore(batcher.records.keys_for(batch_id).dead, batch_id)
        if when is None:
            return None
        out = row(batcher, batch_id, _ms(when))
    except BatchNotFound:
        return None
    try:
        out["events"] = [{"id": e.id, "emitted_at_ms": e.emitted_at_ms, "payload": e.payload}
                         for e in batcher.records.get_batch(batch_id).events]
    except Exception as exc:  # a poison record: say so, never crash
        out["events"] = f"cannot decode: {type(exc).__name__}: {exc}"
    return out


def whereabouts(batcher: Batcher, batch_id: str) -> str:
    """Where a batch that is not dead is, for the word on a `dead show`/`replay` of it: "not dead"
    alone read the same for a running batch and a mistyped id."""
    gone = (f"not a batch of namespace {batcher.keys.namespace!r} (delivered batches leave no record; "
            "see `distbatch dead list`)")
    try:
        k = batcher.records.keys_for(batch_id)
    except BatchNotFound:  # an id naming no shard of the namespace
        return gone
    pipe = batcher.client.pipeline(transaction=False)
    for key in (k.ready, k.running, k.delayed, k.dead):
        pipe.zscore(key, batch_id)
    ready, running, delayed, dead = pipe.execute()
    if dead is not None:
        return "dead"
    if running is not None:
        return "not dead: running on a worker now"
    if ready is not None:
        return "not dead: ready, waiting for a worker"
    if delayed is not None:
        return "not dead: waiting for its next attempt"
    return gone


def ids(batcher: Batcher) -> list[str]:
    """The dead batches' ids (a member that is no text, a hostile writer's, is left out)."""
    out = []
    for k in batcher.shards:
        for i in batcher.client.zrange(k.dead, 0, -1):
            try:
                out.append(as_text(i))
            except UnicodeDecodeError:
                continue
    return out
