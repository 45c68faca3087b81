"""The batch-record lifecycle after a cut: claim (with a token), renew, complete, fail, reclaim,
retry promotion, replay and purge.

A record is ``{ns}:batch:<id>`` and its id sits in exactly one of ``ready`` (claimable, lowest
id first), ``running`` (lease deadline), ``delayed`` (retry backoff) or ``dead``. A claim hands
out a random token; renew, complete and fail carry it, and a stale token (another claim holds the
batch, or this one's lease ran out) changes nothing: a worker that was paused or cut off past its
lease can never touch the batch again. Every script is idempotent per token, so a retried call
after a lost reply does the same thing once.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import redis
from redis.commands.core import Script

from .codec import as_text, decode_batch, decode_events
from .config import Binding
from .errors import BatchNotFound
from .keys import Keys, split_member
from .models import Batch
from .scripts import Scripts

ERROR_TAIL = 4000
"""Characters of a traceback kept on a failed batch: the tail, where the exception line is."""


class Outcome(enum.StrEnum):
    """What `fail` and `reclaim` did."""

    RETRY = "retry"
    DEAD = "dead"
    STALE = "stale"  # this claim no longer holds the batch: nothing changed
    GONE = "gone"  # no record (delivered, or purged)
    LIVE = "live"  # reclaim: the lease was renewed meanwhile


@dataclass(frozen=True, slots=True)
class Claim:
    """A batch taken to run. `token` fences every later change; `error` is set when the record
    cannot be decoded (a poison record): the caller should bury it, not run it."""

    batch: Batch
    token: str
    error: str | None = None


_TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


def _once_more(script: Script, keys: list[str], args: list[Any]) -> Any:
    """Call a script; after a connection error send the very same call once more. Safe because
    every lifecycle script is idempotent per token (whatever redis-py's own retry setting is)."""
    try:
        return script(keys=keys, args=args)
    except _TRANSIENT:
        return script(keys=keys, args=args)


class Records:
    """Batch records of one namespace. Shared by workers, sweepers and the CLI."""

    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts | None = None) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts or Scripts(client)

    def claim_next(self, lease_ms: int, candidates: int = 8) -> Claim | None:
        """Claim the oldest ready batch; None when nothing is ready.

        Reads a few candidates and claims the first still ready in one script call, so workers
        racing for the same head each get a different batch without retry loops.
        """
        while True:
            ids = [as_text(i) for i in self.client.zrange(self.keys.ready, 0, candidates - 1)]
            if not ids:
                return None
            claim = self.claim(ids, lease_ms)
            if claim is not None:
                return claim
            if len(ids) < candidates:  # every candidate was taken by others; look again
                continue

    def claim(self, batch_ids: Sequence[str], lease_ms: int, token: str | None = None) -> Claim | None:
        """Claim the first of `batch_ids` that is still ready; None if none is."""
        k = self.keys
        token = token or secrets.token_hex(8)
        reply = _once_more(self.scripts.claim, [k.ready, k.running, *(k.batch(i) for i in batch_ids)],
                           [token, lease_ms, *batch_ids])
        if not reply:
            return None
        bid, member, reason, cut_ms, attempt, blob = reply
        batch_id = bid.decode()
        binding, pkey = split_member(member.decode())
        error = None
        try:
            events = decode_events(blob)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            events, error = [], f"undecodable batch record: {type(exc).__name__}: {exc}"
        batch = Batch(batch_id, binding, pkey, reason.decode(), events, attempt=int(attempt),
                      cut_at_ms=int(cut_ms))
        return Claim(batch, token, error)

    def renew(self, batch_id: str, token: str, lease_ms: int) -> bool:
        """Extend the lease; False means it is lost (the caller must stop touching the batch)."""
        k = self.keys
        keys = [k.running, k.batch(batch_id)]
        return bool(_once_more(self.scripts.renew, keys, [batch_id, token, lease_ms]))

    def renew_many(self, held: Sequence[tuple[str, str]], lease_ms: int) -> list[bool]:
        """Renew several leases in one round trip: [(batch_id, token)] -> renewed?"""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for batch_id, token in held:
            self.scripts.renew(keys=[k.running, k.batch(batch_id)], args=[batch_id, token, lease_ms],
                               client=pipe)
        return [bool(r) for r in pipe.execute()]

    def complete(self, batch_id: str, token: str) -> int | None:
        """The handler succeeded: delete the record. Events delivered, 0 if it was already gone,
        None if this claim lost the batch (nothing changed)."""
        k = self.keys
        n = int(_once_more(self.scripts.complete, [k.running, k.stats, k.batch(batch_id)], [batch_id, token]))
        return None if n < 0 else n

    def fail(self, batch_id: str, token: str, error: str, retry_in_ms: int | None, *,
             refund: bool = False) -> Outcome:
        """Record a failed try: retry after `retry_in_ms` (ahead of newer batches), or dead when
        None. `refund` gives the try back (this worker could not run the handler at all)."""
        k = self.keys
        res = _once_more(
            self.scripts.fail, [k.ready, k.running, k.delayed, k.dead, k.stats, k.batch(batch_id)],
            [batch_id, token, error[-ERROR_TAIL:], -1 if retry_in_ms is None else retry_in_ms, int(refund)],
        )
        return Outcome(res.decode())

    def reclaim(self, batch_id: str) -> Outcome:
        """Take back a batch whose lease ran out, in one script call."""
        k = self.keys
        res = _once_more(  # a re-run finds the lease gone: 'gone', nothing changes twice
            self.scripts.reclaim,
            [k.bindings, k.dropped, k.ready, k.running, k.dead, k.stats, k.batch(batch_id)], [batch_id],
        )
        return Outcome(res.decode())

    def promote(self, limit: int = 1000) -> tuple[int, int | None, int]:
        """Retries whose backoff ended become ready: (promoted, next due ms or None, server ms)."""
        k = self.keys
        n, nxt, now = self.scripts.promote(keys=[k.delayed, k.ready], args=[limit])
        return int(n), None if int(nxt) < 0 else int(nxt), int(now)

    def replay(self, batch_id: str) -> bool:
        """Make a dead batch ready again with fresh attempts."""
        k = self.keys
        return bool(self.scripts.replay(keys=[k.ready, k.dead, k.batch(batch_id)], args=[batch_id]))

    def purge(self, batch_id: str) -> bool:
        """Delete a dead batch for good."""
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(k.dead, batch_id)
        pipe.delete(k.batch(batch_id))
        removed, _ = pipe.execute()
        return bool(removed)

    def get_batch(self, batch_id: str) -> Batch:
        """The record as a Batch; raises BatchNotFound, or ValueError if it cannot be decoded."""
        record = self.client.hgetall(self.keys.batch(batch_id))
        if not record:
            raise BatchNotFound(batch_id)
        return decode_batch(batch_id, record)

    def raw(self, batch_id: str) -> dict[str, Any]:
        """The record's plain fields (never fails on a poison record): for `dead list/show`."""
        record = self.client.hgetall(self.keys.batch(batch_id))
        if not record:
            raise BatchNotFound(batch_id)
        out: dict[str, Any] = {}
        for name, value in record.items():
            field = as_text(name)
            if field != "events":
                out[field] = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        member = out.get("member", "")
        out["binding"], out["partition_key"] = split_member(member) if "|" in member else (member, None)
        return out

    def binding(self, key: str) -> Binding | None:
        """A binding's definition: registered, or dropped after it cut batches still to deliver."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(k.bindings, key)
        pipe.hget(k.dropped, key)
        live, dropped = pipe.execute()
        raw = live or dropped
        return Binding.from_dict(json.loads(raw)) if raw else None

    def due(self, now_ms: int, limit: int) -> tuple[int, list[str]]:
        """(ready batches waiting, ids of running batches whose lease ran out by `now_ms`)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(k.ready)
        pipe.zrangebyscore(k.running, "-inf", now_ms - 1, start=0, num=limit)
        waiting, expired = pipe.execute()
        return int(waiting), [i.decode() for i in expired]
