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

import contextlib
import enum
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import redis
from redis.commands.core import Script
from redis.exceptions import ClusterError, ResponseError

from .codec import as_text, decode_batch, decode_events
from .config import Binding
from .errors import BatchNotFound, ConfigError, describe
from .keys import Keys, split_member
from .models import Batch
from .scripts import Command, ScriptCall, Scripts, pipelined
from .sent import never_sent
from .shards import Layout, batch_id_shard
from .transport import TRANSIENT, once, once_more

log = logging.getLogger("distbatch.worker")

AWAY_S = 5.0
"""How long a worker passes over a cluster shard whose claim failed (its node away or hanging),
doubling while it fails, up to `AWAY_MAX_S`."""
AWAY_MAX_S = 30.0
DONE_KEPT_MS = 60_000
"""How long `complete.lua` keeps a claim's done marker, by which a resent complete knows it ran
(one marker per delivered batch: longer adds up)."""
RESEND_WITHIN_DONE_S = DONE_KEPT_MS / 1000 - 15
"""How long a complete whose every reply was lost is sent again: well within its marker's life."""
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
    left: int = -1
    """Batches still ready on its shard right after it was taken (-1: not known). A worker that
    took the last one waits on the bell in the round trip that settles it."""
    stale_after: float = math.inf
    """`time.monotonic()` past which the lease has surely run out: the claim was sent before,
    and Redis ran it within the wait it rode behind. A claim read later (its worker was paused
    while the reply waited) is not run: its batch is another worker's by now, or will be."""

    sure_until: float = math.inf
    """`time.monotonic()` up to which the lease is surely alive: Redis ran the claim no earlier
    than it was sent."""


def info_fields(info: bytes | str) -> tuple[str, str, str, str]:
    """A record's `rec:info` value as its fields: member, reason, cut_ms, n ('' where one is
    missing: a garbled record is read, never raised on)."""
    member, reason, cut_ms, n = [*as_text(info, "replace").split("\n", 3), "", "", ""][:4]
    return member, reason, cut_ms, n


class Records:
    """Batch records of one namespace, over all its shards. Shared by workers, sweepers, the CLI.

    A batch id names its shard (`shards.batch_id_shard`), so every call goes to one shard.
    """

    def __init__(self, client: redis.Redis, layout: Layout, scripts: Scripts | None = None) -> None:
        self.client = client
        self.layout = layout
        self.shards = layout.keys
        self.keys = self.shards[0]
        self.scripts = scripts or Scripts(client)
        self._id_prefix = {k.ready: layout.id_prefix(s) for s, k in enumerate(self.shards)}
        """Per shard (its ready key): the prefix of every batch id it makes; its claims and
        reclaims take no other id (a hostile writer's) as one of its batches."""
        self._next = random.randrange(len(self.shards))
        self._rung = self._next  # the shard a waiting worker claims from first: the last that had work
        self._loaded_for_waits = False
        self._unanswered: dict[str, tuple[str, int]] = {}
        """Per shard (its ready key): a claim whose reply was lost or unreadable, (token, how many
        tokens it used at most). Redis may have run it, and its batches are then this worker's,
        leased, with no one to run them until the lease runs out; the next claim on that shard
        goes with the same token, which gets them back at once (`claim.lua` is idempotent per
        token), and claims afresh if they are gone meanwhile."""
        self._cluster = isinstance(client, redis.RedisCluster)
        self._away: dict[int, tuple[float, float]] = {}  # a cluster shard passed over: until, for how long
        timeout = None if self._cluster else client.connection_pool.connection_kwargs.get("socket_timeout")
        self.has_bell = not self._cluster and (timeout is None or timeout >= _BELL_MIN_SOCKET_TIMEOUT)
        """`wait_and_claim` blocks on the shards' bell: not on a cluster (one BLPOP cannot wait across
        nodes), nor with a socket timeout shorter than a blocking wait can take."""

    def keys_for(self, batch_id: str) -> Keys:
        """The shard of a batch id; an id naming no shard of this namespace is not found."""
        shard = batch_id_shard(batch_id)
        if not 0 <= shard < len(self.shards):
            raise BatchNotFound(batch_id)
        return self.shards[shard]

    def _call(self, script: Script, batch_id: str, *args: Any, deadline: float | None = None) -> Any:
        k = self.keys_for(batch_id)
        return once_more(script, k.lifecycle, [batch_id, *args], deadline=deadline)

    def _pipelined_twice(self, calls: list[ScriptCall | Command]) -> list[Any]:
        """One round trip, sent again once after a connection error (each call is idempotent)."""
        try:
            return pipelined(self.client, calls)
        except TRANSIENT:
            return pipelined(self.client, calls)

    @staticmethod
    def _until_answered(send: Callable[[], Any], lease_ms: int, first: BaseException, since: float,
                        settles: bool = False) -> tuple[Any, float]:
        """The reply of a call carrying a claim whose every reply was lost, sent again (each call
        idempotent, the claim by its token) until Redis answers, for up to half a lease; with the
        time of the send answered. Redis may have run it: its batches are then this worker's,
        leased, where no other claim sees them, and a worker with no next claim to carry the
        token (nothing else ready, no ticket) left them to wait out the lease and spend a try
        each unrun; with one attempt, dead, never run. Raises `first` at once when no attempt
        can have reached Redis, and the last error once half the lease is gone, counted from
        `since`, the call's first send. A call that `settles` (completes batches) stops well
        within its done markers' life: a complete resent after its marker ran out finds neither
        record nor marker, and a batch it delivered would read as lost (the books review:
        `lease_lost` for a batch delivered once). From the first send, not from here: the sends
        before took up to two socket timeouts (the diff review: 20 s + 45 s, past the marker)."""
        if never_sent(first):
            raise first
        window_s = lease_ms / 2000
        if settles:
            window_s = min(window_s, RESEND_WITHIN_DONE_S)
        give_up, pause = since + window_s, 0.05
        while time.monotonic() + pause < give_up:
            time.sleep(pause)
            pause = min(2 * pause, 0.4)
            sent = time.monotonic()
            try:
                return send(), sent
            except TRANSIENT as exc:
                first = exc
        raise first

    def claim_next(self, lease_ms: int) -> Claim | None:
        """Claim the oldest ready batch of some shard (shards taken in turn); None when none is
        ready anywhere."""
        claims = self.claim_some(lease_ms, 1)
        return claims[0] if claims else None

    def claim_some(self, lease_ms: int, n: int) -> list[Claim]:
        """Claim up to `n` of the oldest ready batches of the first shard that has any (shards
        taken in turn); [] when none is ready anywhere. One script call per shard looked at. On a
        cluster a shard whose node is away is passed over (raised only when every one is), and
        for `AWAY_S` after (doubling while it stays away, up to `AWAY_MAX_S`): a node that hangs
        costs socket timeouts a look, and looked at every round it held up the other shards'
        batches. When every shard is passed over, all are looked at (there is nothing else)."""
        count = len(self.shards)
        failed: list[Exception] = []
        now = time.monotonic()
        order = [(self._next + i) % count for i in range(count)]
        look = [s for s in order if s not in self._away or self._away[s][0] <= now] or order
        for s in look:
            try:
                claims = self._claim(self.shards[s], [], lease_ms, None, n)
            except TRANSIENT as exc:
                if not self._cluster:  # one Redis: the other shards are no nearer
                    raise
                failed.append(exc)  # a cluster: this shard's node is away, not the others'
                wait = min(AWAY_MAX_S, 2 * self._away[s][1]) if s in self._away else AWAY_S
                self._away[s] = (time.monotonic() + wait, wait)
                continue
            self._away.pop(s, None)
            if claims:
                self._next, self._rung = (s + 1) % count, s
                return claims
        if len(failed) == len(look):
            raise failed[0]
        return []

    def claim(self, batch_ids: Sequence[str], lease_ms: int, token: str | None = None) -> Claim | None:
        """Claim the first of `batch_ids` (all of one shard) that is still ready; None if none is."""
        claims = self._claim(self.keys_for(batch_ids[0]), batch_ids, lease_ms, token, 1)
        return claims[0] if claims else None

    def _claim(self, k: Keys, batch_ids: Sequence[str], lease_ms: int, token: str | None, n: int
               ) -> list[Claim]:
        width, recovered = n, False
        if token is None and not batch_ids:
            token, width, recovered = self._claim_token(k, n)
        token = token or secrets.token_hex(8)
        sent = time.monotonic()

        def send() -> Any:  # on a cluster sent once: `_until_answered` sends it again (a node that
            # hangs costs a socket timeout a send, and `claim_some` passes over it after)
            return (once if self._cluster else once_more)(
                self.scripts.claim, [*k.lifecycle, k.bell],
                [token, lease_ms, n, width, self._id_prefix[k.ready], *batch_ids],
                self.client if self._cluster else None)

        try:
            try:
                reply = send()
            except TRANSIENT as exc:
                if batch_ids:
                    raise
                reply, sent = self._until_answered(send, lease_ms, exc, sent)
        except Exception:  # no reply, or not one to read: the claim may have run
            if not batch_ids:
                self._unanswered[k.ready] = (token, width)
            raise
        return self._afresh_if_lapsed(k, reply, self._claimed(reply, sent, 0.0, lease_ms), recovered,
                                      lease_ms, n)

    def _claim_token(self, k: Keys, n: int) -> tuple[str, int, bool]:
        """The token of the next claim on shard `k`, how many of its tokens a resend looks for,
        and whether it is an unanswered claim's (whose batches may be this worker's already)."""
        lost = self._unanswered.pop(k.ready, None)
        if lost is None:
            return secrets.token_hex(8), n, False
        return lost[0], max(n, lost[1]), True

    def _afresh_if_lapsed(self, k: Keys, reply: Any, claims: list[Claim], recovered: bool, lease_ms: int,
                          n: int) -> list[Claim]:
        """`claims`, or a fresh claim when the call carried an unanswered claim's token and got
        none of its batches back (their leases ran out meanwhile) while batches are ready."""
        if recovered and not claims and int(reply[0]) > 0:
            return self._claim(k, [], lease_ms, None, n)
        return claims

    @staticmethod
    def _claimed(reply: Any, sent: float, wait_s: float, lease_ms: int) -> list[Claim]:
        """`claim.lua`'s reply: batches still ready, then eight fields per batch taken."""
        left = int(reply[0])
        claims = []
        for i in range(1, len(reply), 8):
            bid, member, reason, cut_ms, attempt, blob, t, n = reply[i:i + 8]
            batch_id = as_text(bid)  # digits and dots, or the claim buried it
            error, events = None, []
            try:
                binding, pkey = split_member(as_text(member))
                why, tries, cut = as_text(reason), int(attempt), int(cut_ms)
            except (ValueError, TypeError) as exc:  # a field no cut writes (a hostile writer's), past
                # claim.lua's checks: buried here, as a record that does not decode; never raised
                # out of the claim, whose other batches would then sit leased to no one
                binding, pkey, why, tries, cut = "?", None, "count", 1, 0
                error = f"garbled batch record: {type(exc).__name__}: {exc}"
            else:
                if blob is None:  # its info and tries are there, its events are not: what an
                    # evicting Redis (maxmemory-policy allkeys-*) leaves, said as such (it was a
                    # TypeError of a record that does not decode)
                    error = ("batch record without its events: they are gone from Redis (evicted? "
                             "see maxmemory-policy)")
                else:
                    try:
                        events = decode_events(blob, int(n))
                    except (ValueError, TypeError, msgpack.UnpackException) as exc:
                        error = f"undecodable batch record: {type(exc).__name__}: {exc}"
            batch = Batch(batch_id, binding, pkey, why, events, attempt=tries, cut_at_ms=cut)
            claims.append(Claim(batch, as_text(t), error, left, lease_over_by(sent, wait_s, lease_ms),
                                sent + lease_ms / 1000))
        return claims

    def wait_and_claim(self, lease_ms: int, timeout: float, n: int = 1) -> list[Claim]:
        """Block until a call that made batches ready rings a shard's bell, or for about `timeout`
        (Redis resolves blocking timeouts at its `hz`, 100 ms by default, so a shorter one is
        rounded up), then `claim_some`; in one round trip: the claim is pipelined behind the
        blocking wait, so Redis runs it the moment the bell rings and the batches come back with
        the wake-up. Where there is no bell (`has_bell`), it sleeps and claims."""
        if not self.has_bell:
            time.sleep(timeout)
            return self.claim_some(lease_ms, n)
        try:
            _, claims = self._wait_then_claim([], self._rung, lease_ms, timeout, n)
        except TRANSIENT:  # Redis away: the wait is over; the next look says more
            time.sleep(timeout)
            return []
        return claims

    def _wait_then_claim(self, before: list[ScriptCall], shard: int, lease_ms: int, timeout: float,
                         n: int) -> tuple[list[Any], list[Claim]]:
        """Send `before`, a wait on every shard's bell and a claim on `shard`, in one round trip
        (sent twice at most: each call is idempotent, the claim by its token). If the bell that
        rang is another shard's, or none rang, the other shards are looked at too."""
        k = self.shards[shard]
        if before and not self._loaded_for_waits:
            # a call Redis answered NOSCRIPT is sent again only after the wait: load them first
            # (once; after a restart or SCRIPT FLUSH the first such complete is late by the wait).
            # A user or proxy that may not send SCRIPT gets that late complete: NOSCRIPT is
            # answered with EVAL, as everywhere.
            with contextlib.suppress(ResponseError):
                for script, _, _ in before:
                    self.client.script_load(script.script)
            self._loaded_for_waits = True
        token, width, recovered = self._claim_token(k, n)
        sent = time.monotonic()
        calls: list[ScriptCall | Command] = [
            *before, Command(("BLPOP", *[s.bell for s in self.shards], f"{timeout:.3f}")),
            (self.scripts.claim, [*k.lifecycle, k.bell],
             [token, lease_ms, n, width, self._id_prefix[k.ready]])]
        try:
            try:
                replies = self._pipelined_twice(calls)
            except TRANSIENT as exc:  # asked again without the wait: it is over
                again = [*before, calls[-1]]
                replies, sent = self._until_answered(lambda: self._pipelined_twice(again), lease_ms, exc,
                                                     sent, settles=bool(before))
                replies.insert(-1, None)  # no bell known to have rung
            *settled, rung, reply = replies
            # An error answered to a call before the claim (a hostile writer's WRONGTYPE) raises
            # here, after the claim may have taken batches: they wait for the next claim.
            _raised(settled)
            claims = self._claimed(_raised([reply])[0], sent, timeout, lease_ms)
        except Exception:  # every reply lost, or one an error: the claim may have run
            self._unanswered[k.ready] = (token, width)
            raise
        claims = self._afresh_if_lapsed(k, reply, claims, recovered, lease_ms, n)
        if isinstance(rung, Exception):  # a bell that is no list (a hostile writer): taken as no ring;
            rung = None  # the claim still counts, and deletes the bell once nothing is ready
        if claims:
            self._rung = shard
        elif len(self.shards) > 1:
            bells = [s.bell for s in self.shards]
            named = as_text(rung[0]) if rung else None
            other = bells.index(named) if named in bells else None
            claims = self._other_shards(lease_ms, n, other if other != shard else None)
        return settled, claims

    def _other_shards(self, lease_ms: int, n: int, rung: int | None = None) -> list[Claim]:
        """After the calls of a pipeline ran, look for ready batches on the other shards (the one
        whose bell rang first); a connection error here is no error of those calls: none found."""
        try:
            claims = []
            if rung is not None:
                claims = self._claim(self.shards[rung], [], lease_ms, None, n)
                self._rung = rung
            return claims or self.claim_some(lease_ms, n)
        except TRANSIENT as exc:
            log.warning("claim failed: %s; looked at again on the next round", describe(exc))
            return []

    def renew(self, batch_id: str, token: str, lease_ms: int) -> bool:
        """Extend the lease; False means it is lost (the caller must stop touching the batch)."""
        return bool(self._call(self.scripts.renew, batch_id, token, lease_ms))

    def renew_many(self, held: Sequence[tuple[str, str]], lease_ms: int) -> list[bool | None]:
        """Renew several leases, in one round trip on one Redis: [(batch_id, token)] -> renewed?
        On a cluster one call per batch, each on its own: a batch whose renewal fails (its node
        away, its slot on the move past lease/3) is None, not known to be lost nor renewed, and
        holds up no other batch's renewal."""
        if self._cluster:
            deadline = time.monotonic() + lease_ms / 3000
            renewed: list[bool | None] = []
            for bid, token in held:
                try:
                    ok = self._call(self.scripts.renew, bid, token, lease_ms, deadline=deadline)
                    renewed.append(bool(ok))
                except (*TRANSIENT, ClusterError) as exc:
                    log.warning("lease renewal failed batch=%s: %s; tried again within lease/3", bid,
                                describe(exc))
                    renewed.append(None)
            return renewed
        renew = self.scripts.renew
        replies = pipelined(self.client, [(renew, self.keys_for(bid).lifecycle, [bid, token, lease_ms])
                                          for bid, token in held])
        return [bool(r) for r in _raised(replies)]

    def complete(self, batch_id: str, token: str) -> int | None:
        """The handler succeeded: delete the record. Events delivered, 0 if this claim delivered
        it already (a resent call), None if this claim lost the batch (nothing changed)."""
        k = self.keys_for(batch_id)
        return _delivered(int(once_more(self.scripts.complete, [*k.lifecycle, k.done(token)],
                                        [batch_id, token, DONE_KEPT_MS])))

    def complete_and_claim(self, done: Sequence[tuple[str, str]], lease_ms: int, n: int = 1,
                           wait_s: float = 0.0) -> tuple[list[int | None], list[Claim]]:
        """`complete` each (batch_id, token) in `done`, then `claim_some(n)` on the last one's
        shard, in one round trip (`n` = 0: the completes alone): a worker running a stream of
        batches pays one round trip per round of batches for both. With `wait_s` (the batches in
        hand were the last ones ready) a wait on the bell goes between them, so a worker fed one
        batch at a time also pays one round trip per batch. Only on one Redis (a cluster's shards
        live on different nodes); a resend sends them again, each idempotent (the claim carries
        its token)."""
        if self._cluster:
            return self._complete_each(done), self.claim_some(lease_ms, n) if n > 0 else []
        completes: list[ScriptCall] = []
        for bid, token in done:
            k = self.keys_for(bid)
            completes.append((self.scripts.complete, [*k.lifecycle, k.done(token)],
                              [bid, token, DONE_KEPT_MS]))
        if n == 0:
            return [_delivered(int(r)) for r in _raised(self._pipelined_twice([*completes]))], []
        shard = batch_id_shard(done[-1][0])
        if wait_s > 0 and self.has_bell:
            settled, claims = self._wait_then_claim(completes, shard, lease_ms, wait_s, n)
            return [_delivered(int(r)) for r in _raised(settled)], claims
        k = self.shards[shard]
        next_token, width, recovered = self._claim_token(k, n)
        sent = time.monotonic()
        calls: list[ScriptCall | Command] = [
            *completes, (self.scripts.claim, [*k.lifecycle, k.bell],
                         [next_token, lease_ms, n, width, self._id_prefix[k.ready]])]
        try:
            try:
                replies = self._pipelined_twice(calls)
            except TRANSIENT as exc:
                replies, sent = self._until_answered(lambda: self._pipelined_twice(calls), lease_ms, exc,
                                                     sent, settles=bool(completes))
            *completed, reply = _raised(replies)
        except Exception:  # every reply lost, or one an error (a complete's): the claim may have run
            self._unanswered[k.ready] = (next_token, width)
            raise
        claims = self._afresh_if_lapsed(k, reply, self._claimed(reply, sent, 0.0, lease_ms), recovered,
                                        lease_ms, n)
        if not claims and len(self.shards) > 1:
            claims = self._other_shards(lease_ms, n)  # this shard is empty: look at the others
        return [_delivered(int(r)) for r in completed], claims

    def _complete_each(self, done: Sequence[tuple[str, str]]) -> list[int | None]:
        """On a cluster, one `complete` per batch (their shards live on different nodes): every
        one is tried, so a node away holds up none of the other batches' completes (each would
        otherwise run again once its lease ran out); then the first failure is raised."""
        settled: list[int | None] = []
        failed: Exception | None = None
        for bid, token in done:
            try:
                settled.append(self.complete(bid, token))
            except TRANSIENT as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        return settled

    def fail(self, batch_id: str, token: str, error: str, retry_in_ms: int | None, *,
             refund: bool = False) -> Outcome:
        """Record a failed try: retry after `retry_in_ms` (ahead of newer batches), or dead when
        None. `refund` gives the try back (this worker could not run the handler at all)."""
        k = self.keys_for(batch_id)
        res = once_more(self.scripts.fail, [*k.lifecycle, k.bell],
                        [batch_id, token, error[-ERROR_TAIL:], -1 if retry_in_ms is None else retry_in_ms,
                         int(refund)])
        return Outcome(as_text(res))

    def reclaim(self, batch_id: str, shard: int | None = None) -> Outcome:
        """Take back a batch whose lease ran out, in one script call (a re-sent call finds the
        lease gone and changes nothing twice). `shard`: the one whose running set holds the id
        (a sweeper's); an id that shard never makes is only taken out of it (a hostile writer's
        member naming another shard, or none, must not hold up the sweep)."""
        k = self.keys_for(batch_id) if shard is None else self.shards[shard]
        res = once_more(self.scripts.reclaim, [*k.lifecycle, k.bindings, k.dropped, k.bell],
                        [batch_id, self._id_prefix[k.ready]])
        return Outcome(as_text(res))

    def promote(self, shard: int, limit: int = 1000) -> tuple[int, int | None, int]:
        """Retries whose backoff ended become ready: (promoted, next due ms or None, server ms).
        (A resend promotes what is due then: nothing twice; after a lost reply it says 0 for
        what the first call promoted, so the sweeper's ticket for them waits for its nudge.)"""
        k = self.shards[shard]
        n, nxt, now = once_more(self.scripts.promote, [*k.lifecycle, k.bell], [limit])
        return int(n), None if int(nxt) < 0 else int(nxt), int(now)

    def replay(self, batch_id: str) -> bool:
        """Make a dead batch ready again with fresh attempts (False: no dead batch by that id)."""
        return self._once(self.scripts.replay, batch_id)

    def purge(self, batch_id: str) -> bool:
        """Delete a dead batch for good (False: no dead batch by that id)."""
        return self._once(self.scripts.purge, batch_id)

    def _once(self, script: Script, batch_id: str) -> bool:
        """A call that removes the dead batch it names: its resend after a lost reply finds the
        reply it kept (`kept_reply.lua`), not "no dead batch"."""
        try:
            k = self.keys_for(batch_id)
        except BatchNotFound:
            return False
        return bool(once_more(script, [*k.lifecycle, k.kept(secrets.token_hex(8)), k.bell], [batch_id]))

    def _fields(self, batch_id: str) -> tuple[Any, Any, Any, Any]:
        k = self.keys_for(batch_id)
        if self._cluster:
            return (self.client.hget(k.rec_info, batch_id), self.client.hget(k.rec_events, batch_id),
                    self.client.hget(k.rec_attempt, batch_id), self.client.hget(k.rec_error, batch_id))
        pipe = self.client.pipeline(transaction=False)
        for h in (k.rec_info, k.rec_events, k.rec_attempt, k.rec_error):
            pipe.hget(h, batch_id)
        info, events, attempt, error = pipe.execute()
        return info, events, attempt, error

    def get_batch(self, batch_id: str) -> Batch:
        """The record as a Batch; raises BatchNotFound, or ValueError if it cannot be decoded."""
        info, events, attempt, _ = self._fields(batch_id)
        if info is None:
            raise BatchNotFound(batch_id)
        return decode_batch(batch_id, info, events, attempt)

    def raw(self, batch_id: str) -> dict[str, Any]:
        """The record's plain fields (never fails on a poison record): for `dead list/show`."""
        info, _, attempt, error = self._fields(batch_id)
        if info is None:
            raise BatchNotFound(batch_id)
        member, reason, cut_ms, n = info_fields(info)
        out: dict[str, Any] = {"member": member, "reason": reason, "cut_ms": _int(cut_ms), "n": _int(n),
                               "attempt": _int(attempt or 0)}
        try:
            out["binding"], out["partition_key"] = split_member(member)
        except ValueError:  # a garbled record (a hostile writer's): shown as it is, never raised
            out["binding"], out["partition_key"] = None, None
        if error is not None:
            failed_ms, _by, outcome, text = [*as_text(error, "replace").split("\n", 3), "", "", ""][:4]
            out.update(failed_ms=_int(failed_ms), outcome=outcome, error=text)
        return out

    def binding(self, key: str) -> Binding | None:
        """A binding's definition: registered, or dropped after it cut batches still to deliver."""
        k = self.keys
        raw = self.client.hget(k.bindings, key) or self.client.hget(k.dropped, key)
        return Binding.stored_as(raw, key) if raw else None

    def bindings_of(self, keys: list[str]) -> dict[str, Binding | None]:
        """`binding` for each of `keys` in one round trip (`stats` reads every dropped version's
        at each scrape); None for one gone or unreadable."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(k.bindings, key)
            pipe.hget(k.dropped, key)
        replies = pipe.execute() if keys else []
        out: dict[str, Binding | None] = {}
        for key, registered, dropped in zip(keys, replies[::2], replies[1::2], strict=True):
            raw = registered or dropped
            try:
                out[key] = Binding.stored_as(raw, key) if raw else None
            except ConfigError:
                out[key] = None
        return out

    def count(self, which: str) -> int:
        """How many ids all shards hold in `ready`, `running`, `delayed` or `dead`."""
        return sum(int(self.client.zcard(getattr(k, which))) for k in self.shards)

    def misfiled(self) -> list[str]:
        """The keys of this namespace that hold another type than distbatch keeps there (a
        hostile writer's, an operator's mistake), so that a refusal (WRONGTYPE) names them:
        `key (a string; distbatch keeps a zset there)`. Its buffers are not looked at (a million
        of them): the per-binding sets listing them are."""
        typed = list(self.keys.namespace_typed)
        for k in self.shards:
            typed += k.typed
            if self._type(k.bindings) == "hash":
                names = [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)
                         for b in self.client.hkeys(k.bindings)]
                typed += [(k.open_buffers(name), "set") for name in names]
        out = []
        for name, kept in typed:
            found = self._type(name)
            if found not in ("none", kept):
                out.append(f"{name} (a {found}; distbatch keeps a {kept} there)")
        return out

    def misfiled_hint(self, exc: BaseException) -> str:
        """What to add to the word on a refusal `exc`: the keys behind a WRONGTYPE, if any."""
        if "WRONGTYPE" not in str(exc):
            return ""
        try:
            wrong = self.misfiled()
        except redis.RedisError:  # only a better word on an error said anyway
            return ""
        return f"; keys of the wrong type (delete or rename them): {', '.join(wrong)}" if wrong else ""

    def _type(self, name: str) -> str:
        found = self.client.type(name)
        return found.decode() if isinstance(found, bytes) else str(found)


_BELL_MIN_SOCKET_TIMEOUT = 0.5
"""Redis answers a blocking wait up to ~2 of its `hz` ticks (100 ms each by default) late."""


_LATE_S = 1.0
"""How much later than sent (beyond a wait it rode behind) Redis may have run a claim: a
blocking timeout resolves up to ~200 ms late, and a claim is not called stale for less."""


def lease_over_by(sent: float, wait_s: float, lease_ms: int) -> float:
    return sent + wait_s + _LATE_S + lease_ms / 1000


def _delivered(n: int) -> int | None:
    """`complete.lua`'s reply: events delivered, or None when this claim lost the batch."""
    return None if n < 0 else n


def _raised(replies: list[Any]) -> list[Any]:
    """A pipeline's replies, or the first error among them raised."""
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return replies


def _int(value: Any) -> int | None:
    """A record's number, or None where a hostile writer left none (`raw` never fails)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
