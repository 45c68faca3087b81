"""Tests added by a mutation review: each one fails on a one-line bug that no other test caught
(see the docstrings), and passes on the code as it is."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from distbatch import Batcher, EmitError, ManualClock
from distbatch.executor import Executor
from distbatch.handlers import HandlerResolver
from distbatch.records import Outcome
from distbatch.scripts import call
from distbatch.shards import batch_id_shard
from distbatch.sweeper import Sweeper

from .test_fencing import states
from .test_poison import _break_hash, _repair


@pytest.mark.parametrize("single", [True, False], ids=["emit", "emit_many"])
def test_a_late_event_whose_expired_cut_a_hostile_value_fails_loses_no_event(
        make_batcher: Callable[..., Batcher], clock: ManualClock, single: bool) -> None:
    """SPEC §3 (every acknowledged event reaches a handler; bad input never corrupts another
    buffer). A late event closes its expired buffer itself (`close_if_expired`): the record
    must be written before the buffer is emptied, as in every other cut. Done the other way
    round, a write that fails (here a records hash a hostile writer made a string) leaves the
    buffer deleted and no record: both acknowledged events are gone without a trace.
    Mutant: accept_steps.lua close_if_expired, `close_buffer` moved before `cut_batch`."""
    b = make_batcher(clock=clock, handoff=False)
    b.register("t", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "10s"})
    b.emit_many("s", [{"i": 0}, {"i": 1}])
    _break_hash(b, "rec_events")
    clock.advance("11s")
    with pytest.raises(EmitError):
        if single:
            b.emit("s", {"i": 2})  # late: closes the expired buffer first, whose cut fails
        else:
            b.emit_many("s", [{"i": 2}])
    assert sum(int(b.client.llen(k.buffer("t@v1", None))) for k in b.shards) == 2
    _repair(b)
    (cut,) = b.flush_expired()
    assert [e.payload["i"] for e in cut.events] == [0, 1]


def test_the_lease_keeper_renews_well_within_the_lease(batcher: Batcher) -> None:
    """SPEC §3 (a batch runs in at most one worker at a time while that worker holds its
    lease). The lease keeper renews every lease/3: a handler that runs for longer than its
    lease keeps it with room to spare. Renewing only once a lease (the lease keeper's sleep
    off by a factor of 3) lets every lease run out just before each renewal, and a sweeper's
    reclaim in that gap hands a running batch to a second worker.
    Mutant: executor.py LeaseKeeper._run, `lease_ms / 3000` -> `lease_ms / 1000`."""
    batcher.register("f", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None
    bid, rec = r.batch.id, batcher.records
    lease_ms = 900
    claim = rec.claim([bid], lease_ms)
    assert claim is not None
    running = rec.keys_for(bid).running
    first = batcher.client.zscore(running, bid)
    ex = Executor(rec, HandlerResolver(["m"]), lease_ms=lease_ms)
    held = ex.leases.hold(bid, claim.token, None)
    try:
        time.sleep(lease_ms / 1000 * 0.6)  # past the first renewal (lease/3), short of a full lease
        now = batcher.client.zscore(running, bid)
        assert now is not None and first is not None and now > first  # renewed already
        assert not held.lost
    finally:
        ex.leases.release(bid)
    assert rec.complete(bid, claim.token) == 1


def test_a_reclaim_that_finds_the_lease_renewed_meanwhile_changes_nothing(batcher: Batcher) -> None:
    """SPEC §3 (a batch runs in at most one worker at a time while that worker holds its
    lease). A sweeper picks the leases that ran out with one read and reclaims each with a
    script call after it: a worker's renewal can come in between. The script must look at the
    lease again and leave a live one alone ('live'); taking it back hands a batch whose worker
    holds a live lease to a second worker, and the first one's complete is refused.
    Mutant: reclaim.lua, the `lease >= now -> 'live'` line removed."""
    batcher.register("f", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None
    bid, rec = r.batch.id, batcher.records
    claim = rec.claim([bid], 60_000)
    assert claim is not None
    assert rec.reclaim(bid) == Outcome.LIVE
    k = rec.keys_for(bid)
    assert batcher.client.zscore(k.running, bid) is not None and batcher.client.zscore(k.ready, bid) is None
    assert rec.claim_some(60_000, 1) == []  # no second worker gets it
    assert rec.renew(bid, claim.token, 60_000) is True
    assert rec.complete(bid, claim.token) == 1


def test_a_claims_token_is_forgotten_once_its_try_is_over(batcher: Batcher) -> None:
    """A try that ends by fail (retry) or by reclaim (lease ran out) disowns its token: it
    leaves `rec:owner` and `rec:tokens`, so no token outlives its claim. Fencing itself still
    holds without it (the lease check refuses the old token), but every failed or reclaimed try
    would leave a `rec:tokens` entry behind for good: a hash that grows with every retry.
    Mutants: fail.lua / reclaim.lua without `disown(id)`."""
    batcher.register("f", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None
    bid, rec = r.batch.id, batcher.records
    k = rec.keys_for(bid)
    first = rec.claim([bid], 60_000)
    assert first is not None
    assert rec.fail(bid, first.token, "boom", 0) == Outcome.RETRY
    assert batcher.client.hget(k.rec_tokens, first.token) is None
    assert batcher.client.hget(k.rec_owner, bid) is None
    second = rec.claim([bid], -1)  # its worker dies: the lease is over at once
    assert second is not None
    assert rec.reclaim(bid) == Outcome.RETRY
    assert batcher.client.hget(k.rec_tokens, second.token) is None
    assert batcher.client.hget(k.rec_owner, bid) is None
    third = rec.claim([bid], 60_000)
    assert third is not None and third.batch.attempt == 3
    assert rec.complete(bid, third.token) == 1
    assert batcher.client.hlen(k.rec_tokens) == 0 and batcher.client.hlen(k.rec_owner) == 0


def test_a_promoted_retry_leaves_the_delayed_set_and_is_never_promoted_twice(batcher: Batcher) -> None:
    """SPEC §3 (a batch runs in at most one worker at a time). A retry whose backoff is over
    moves from `delayed` to `ready`: moved, not copied. Left in `delayed` too, the next promote
    makes it ready again while its new claim runs it, and a second worker claims it: the batch
    runs twice at once.
    Mutant: promote.lua, `ZREM delayed` removed."""
    batcher.register("f", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None
    bid, rec = r.batch.id, batcher.records
    shard = batch_id_shard(bid)
    first = rec.claim([bid], 60_000)
    assert first is not None
    assert rec.fail(bid, first.token, "boom", 1) == Outcome.RETRY  # retried after 1 ms
    time.sleep(0.05)
    assert rec.promote(shard)[0] == 1
    assert states(batcher, bid) == ["ready"]
    second = rec.claim_next(60_000)
    assert second is not None and second.batch.id == bid
    time.sleep(0.01)
    rec.promote(shard)
    assert states(batcher, bid) == ["running"]
    assert rec.claim_some(60_000, 1) == []  # no second worker gets it
    assert rec.complete(bid, second.token) == 1
    assert states(batcher, bid) == []


def test_a_heal_whose_shard_changed_since_it_was_seen_writes_nothing(batcher: Batcher) -> None:
    """SPEC §3 / §1 drop: a heal (`sync_registry.lua`) copies the first shard's registry onto a
    shard only while that shard's epoch is still the one the emitter saw. A drop that ran in
    between changed it: the copy of the registry read before the drop must not put the dropped
    binding back (it would take events again after `drop()` returned, on that shard only, in
    buffers no drop returns). The end-to-end test heals itself again at the next refusal, so it
    does not see the window; the script is asked directly here.
    Mutant: sync_registry.lua, the epoch check (line 13) removed."""
    b, client = batcher, batcher.client
    b.register("x", version="v1", source="s", handler="m.h", batch={"count": 100, "window": "1h"})
    k = b.shards[-1]
    seen = client.get(k.registry_version)
    definition = client.hget(k.bindings, "x@v1")
    assert seen is not None and definition is not None
    b.drop("x@v1")
    assert client.get(k.registry_version) != seen
    reply = call(b.scripts.sync_registry, [k.bindings, k.registry_version, k.dropped],
                 [seen, seen, "x@v1", definition])
    assert reply == 0
    assert not client.hexists(k.bindings, "x@v1") and client.hexists(k.dropped, "x@v1")
    assert client.get(k.registry_version) != seen


def test_a_flush_never_cuts_a_buffer_whose_window_has_not_run_out(
        batcher: Batcher, clock: ManualClock) -> None:
    """SPEC §1 (a window counts from the first event and is not cut before it runs out). A flush
    reads the due buffers first (`due_buffers.lua`) and passes them to `flush_expired.lua`: in
    between, a late event can close the due buffer and open a fresh one under the same key
    (`close_if_expired`). The flush script checks each deadline again and leaves a buffer not
    yet due alone; without that check it cuts the fresh buffer at once, a batch of one event
    long before its window ran out. The race is made here by passing the buffer directly.
    Mutant: flush_expired.lua line 53, the `deadline > now` part dropped."""
    b = batcher
    b.register("t", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "10s"})
    b.emit("s", {"i": 0})
    (s,) = [i for i, k in enumerate(b.shards) if b.client.llen(k.buffer("t@v1", None))]
    k = b.shards[s]
    keys = [k.deadlines, k.batch_seq, k.bindings, *k.cut, k.kept("review"), k.bell,
            k.buffer("t@v1", None), k.open_buffers("t@v1")]
    reply = call(b.scripts.flush_expired, keys, [clock.now_ms(), b.layout.id_prefix(s), k.buffer_prefix, 1])
    assert reply[2] == 1 and len(reply) == 4  # one candidate not due yet, no batch
    assert b.client.llen(k.buffer("t@v1", None)) == 1 and b.open_buffers() == 1
    clock.advance("10s")
    (cut,) = b.flush_expired()
    assert [e.payload["i"] for e in cut.events] == [0]


def test_a_shard_held_by_a_live_sweeper_is_not_taken_by_another(batcher: Batcher) -> None:
    """Sweepers share the shards with leases (`shard_lease.lua`): a shard another sweeper holds
    is not held by a second one (each would sweep it; harmless for correctness, every step is
    atomic, but the sharing the README promises is gone and the load doubles).
    Mutant: shard_lease.lua, `if holder then return 0 end` removed."""
    k = batcher.shards[0]
    lease = batcher.scripts.shard_lease
    assert call(lease, [k.lease], ["aaaa", 3000, "hold"]) == 1
    assert call(lease, [k.lease], ["bbbb", 3000, "hold"]) == 0
    assert batcher.client.get(k.lease) == b"aaaa"
    assert call(lease, [k.lease], ["aaaa", 3000, "release"]) == 0 and batcher.client.get(k.lease) is None


def test_a_running_sweeper_keeps_its_shard_leases_and_heartbeat(batcher: Batcher) -> None:
    """A sweeper holds its shards with short leases and heartbeats, renewed every lease/3 while
    it runs: a live sweeper's shards never look free, and `stats` / health checks see it alive.
    Skipping the renewal once shards are held lets every lease and the heartbeat run out under
    a sweeper that still sweeps (a second sweeper then takes the same shards; the health check
    calls the namespace unswept). Sweeps are atomic, so no event is lost: an operational bug.
    Mutant: sweeper.py run_once, `or time.monotonic() - self._leased_at > lease/3` dropped."""
    sweeper = Sweeper(batcher, lease_s=0.6)
    try:
        sweeper.run_once()
        assert sweeper.owned
        for _ in range(8):  # 1.2 s: twice the lease
            time.sleep(0.15)
            sweeper.run_once()
        for s in sweeper.owned:
            assert batcher.client.get(batcher.shards[s].lease) == sweeper.id.encode()
        beat = batcher.client.zscore(batcher.keys.sweepers, sweeper.id)
        assert beat is not None and beat >= batcher.server_ms() - 600
    finally:
        sweeper.release()
