"""A record that cannot be decoded never takes innocent events down silently: what cannot
round-trip is refused at emit, and a poisoned record (a hostile writer) goes dead at once with a
clear error, listable and showable."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from distbatch import Batcher, EmitError, PayloadError
from distbatch.cli import main as cli
from distbatch.executor import Executor, Status
from distbatch.handlers import HandlerResolver

from .redis_server import RedisServer


@pytest.mark.parametrize("payload", [{"k": "x", (1, 2): "y"}, {"nested": {(1,): 1}}])
def test_payload_that_cannot_round_trip_is_refused_and_stores_nothing(batcher: Batcher, client,
                                                                        payload) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h"})
    with pytest.raises(PayloadError) as err:
        batcher.emit_many("s", [{"ok": 1}, payload])
    assert err.value.code == "payload_unencodable"
    assert not client.exists(batcher.keys.buffer("d@v1", None))


def test_poisoned_record_goes_dead_at_once_and_the_cli_shows_it(redis_server: RedisServer,
                                                                 namespace: str) -> None:
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"},
               retry={"attempts": 5})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None
    poisoned = b.records.keys_for(r.batch.id).rec_events
    b.client.hset(poisoned, r.batch.id, b"\xc1\xc1garbage")  # a hostile writer
    claim = b.records.claim([r.batch.id], 10_000)
    assert claim is not None and claim.error is not None
    out = Executor(b.records, HandlerResolver(["m"])).run(claim)
    assert out.status == Status.POISON and out.attempt == 1
    assert b.client.zscore(b.records.keys_for(r.batch.id).dead, r.batch.id) is not None
    args = ["--redis-url", redis_server.url, "--namespace", namespace]
    listed = CliRunner().invoke(cli, ["dead", "list", *args])
    assert listed.exit_code == 0, listed.output
    row = json.loads(listed.output)
    assert row["id"] == r.batch.id and "undecodable batch record" in row["error"]
    shown = CliRunner().invoke(cli, ["dead", "show", r.batch.id, *args])
    assert shown.exit_code == 0, shown.output
    assert "cannot decode" in json.loads(shown.output)["events"]


def test_a_record_whose_events_were_evicted_is_named_so(redis_server: RedisServer, namespace: str) -> None:
    """An evicting Redis (allkeys-*) dropped a batch's events and kept its info and tries: the
    worker buried it as "undecodable batch record: TypeError: object of type 'NoneType' has no
    len()" (the lifecycle review's run). Now the dead batch says its events are gone, and why."""
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None
    b.client.hdel(b.records.keys_for(r.batch.id).rec_events, r.batch.id)  # what eviction leaves
    claim = b.records.claim([r.batch.id], 10_000)
    assert claim is not None and claim.error is not None
    assert "without its events" in claim.error and "maxmemory-policy" in claim.error, claim.error
    assert "TypeError" not in claim.error
    assert Executor(b.records, HandlerResolver(["m"])).run(claim).status == Status.POISON


# A hostile writer with access to Redis: whatever it writes into distbatch's keys, a script fails
# before it changes anything (no event lost, no batch left in none of ready / running / delayed /
# dead), and one garbled batch holds up no other.

def _where(b: Batcher, bid: str) -> list[str]:
    k = b.records.keys_for(bid)
    sets = {"ready": k.ready, "running": k.running, "delayed": k.delayed, "dead": k.dead}
    return [name for name, key in sets.items() if b.client.zscore(key, bid) is not None]


def _break_seq(b: Batcher, value: str) -> None:
    for k in b.shards:
        b.client.set(k.batch_seq, value)


def _break_hash(b: Batcher, attr: str) -> None:
    for k in b.shards:
        b.client.set(getattr(k, attr), "not a hash")


def _repair(b: Batcher) -> None:
    for k in b.shards:
        for key in (k.batch_seq, k.rec_events, k.ready):
            if b.client.type(key) == b"string":
                b.client.delete(key)


@pytest.mark.parametrize("hostile", [
    lambda b: _break_seq(b, "not a number"), lambda b: _break_seq(b, str(2**63 - 1)),
    lambda b: _break_hash(b, "rec_events"), lambda b: _break_hash(b, "ready"),
], ids=["seq-not-a-number", "seq-at-int64-max", "records-not-a-hash", "ready-not-a-zset"])
def test_a_cut_that_a_hostile_value_fails_loses_no_event(make_batcher, clock, hostile) -> None:
    """Redis keeps what a script wrote before an error: a cut writes the batch's id and record
    before it empties the buffer, so the call fails with every acknowledged event still there."""
    b = make_batcher(clock=clock, handoff=False)
    b.register("t", version="v1", source="s", handler="m.h", batch={"count": 3, "window": "10s"})
    b.register("u", version="v1", source="s2", handler="m.h", batch={"count": 100, "window": "10s"})
    b.emit_many("s", [{"i": 0}, {"i": 1}])
    b.emit_many("s2", [{"i": i} for i in range(5)])
    hostile(b)
    with pytest.raises(EmitError, match=r"batchseq|overflow|not an integer|WRONGTYPE") as err:
        b.emit("s", {"i": 2})  # reaches count: the cut fails
    assert err.value.stored == [] and err.value.uncertain == [0]  # told: maybe stored (it is not)
    clock.advance("11s")
    with pytest.raises(Exception, match=r"batchseq|overflow|not an integer|WRONGTYPE"):
        b.flush_expired()  # the windows ran out: neither cut goes through
    buffered = sorted(sum(int(b.client.llen(k.buffer(binding, None))) for k in b.shards)
                      for binding in ("t@v1", "u@v1"))
    # every event acknowledged is still there; the one whose cut failed was taken back out (it
    # once stayed, its buffer at count uncut, and the next event made a batch above count)
    assert buffered == [2, 5]
    assert b.counters()["events_in:t@v1"] == 2
    _repair(b)  # the operator repairs it: the cuts go through
    cut = b.flush_expired()
    assert sorted(len(x.events) for x in cut) == [2, 5]


@pytest.mark.parametrize("single", [True, False], ids=["emit", "emit_many"])
def test_a_call_whose_cut_fails_part_way_says_so_and_leaves_no_buffer_at_count(
        batcher: Batcher, single: bool) -> None:
    """A hostile writer made the records hash a string; the call's second item reaches count.
    The call once raised a bare ResponseError with its first item stored, its second pushed but
    uncut (its buffer at count: the next event made a batch of count + 1) and neither counted.
    Now the failing item is taken back, the one before stays counted, and the caller is told
    which may be stored."""
    from distbatch import EmitError

    batcher.register("d", version="v1", source="s", handler="m.h",
                     batch={"count": 2, "window": "1h", "key": "k"})
    batcher.emit("s", {"k": "b", "n": 0})
    _break_hash(batcher, "rec_events")
    with pytest.raises(EmitError, match="the script failed") as err:
        if single:
            batcher.emit("s", {"k": "b", "n": 2})
        else:
            batcher.emit_many("s", [{"k": "a", "n": 1}, {"k": "b", "n": 2}])
    # on a cluster the first item's shard may be another, whose call went through: stored
    assert sorted(err.value.stored + err.value.uncertain) == ([0] if single else [0, 1])
    assert err.value.uncertain[-1] == (0 if single else 1)

    def length(pkey: str) -> int:
        return sum(int(batcher.client.llen(k.buffer("d@v1", pkey))) for k in batcher.shards)

    assert length("b") == 1 and length("a") == (0 if single else 1)
    assert batcher.counters()["events_in:d@v1"] == (1 if single else 2)
    _repair(batcher)
    (r,) = batcher.emit("s", {"k": "b", "n": 3})
    assert r.batch is not None and [e.payload["n"] for e in r.batch.events] == [0, 3]


def test_a_buffer_a_hostile_writer_filled_past_count_is_cut_at_count(batcher: Batcher) -> None:
    """No batch has more than `count` events, whatever a buffer holds: the oldest `count` go, the
    rest stay buffered."""
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 3, "window": "1h"})
    batcher.emit("s", {"n": 0})
    (k,) = [k for k in batcher.shards if batcher.client.llen(k.buffer("d@v1", None))]
    (event,) = batcher.client.lrange(k.buffer("d@v1", None), 0, -1)
    batcher.client.rpush(k.buffer("d@v1", None), event, event, event)  # 4 held, count 3
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None and len(r.batch.events) == 3
    assert batcher.client.llen(k.buffer("d@v1", None)) == 2


def test_a_drop_that_meets_a_hostile_buffer_deletes_none(batcher: Batcher) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h",
                     batch={"count": 9, "window": "1h", "key": "k"})
    batcher.emit_many("s", [{"k": "a"}, {"k": "b"}, {"k": "b"}])
    for k in batcher.shards:  # a member in the open set whose buffer is no list
        batcher.client.sadd(k.open_buffers("d@v1"), "d@v1|=zz")
        batcher.client.set(k.buffer("d@v1", "zz"), "not a list")
    with pytest.raises(Exception, match="WRONGTYPE"):
        batcher.drop("d@v1")
    held = sorted(sum(int(batcher.client.llen(k.buffer("d@v1", p))) for k in batcher.shards) for p in "ab")
    assert held == [1, 2]


@pytest.mark.parametrize("snapshot", [False, True], ids=["all-lost", "older-snapshot"])
def test_batch_ids_never_repeat_after_redis_loses_its_data(namespace: str, snapshot: bool) -> None:
    """A handler made idempotent on `batch.id` (as the README asks) must never skip a new batch:
    after Redis restarts with nothing, or with an older snapshot of the sequence (killed after
    its last RDB save), ids go on above every id handed out before."""
    own = RedisServer().start()  # restarted below: not the session's shared server
    try:
        _ids_across_a_restart(own, namespace, snapshot)
    finally:
        own.cleanup()


def _ids_across_a_restart(redis_server: RedisServer, namespace: str, snapshot: bool) -> None:
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    before = {r.batch.id for r in b.emit_many("s", [{"n": i} for i in range(2)]) if r.batch}
    if snapshot:
        b.client.save()  # the last snapshot: the sequence as it is now
    before |= {r.batch.id for r in b.emit_many("s", [{"n": i} for i in range(3)]) if r.batch}
    redis_server.stop(kill=True)
    redis_server.start()  # back with the snapshot's older sequence, or with nothing
    if not snapshot:
        assert not b.client.exists(b.keys.batch_seq)
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    after = {r.batch.id for r in b.emit_many("s", [{"n": i} for i in range(5)]) if r.batch}
    assert len(before) == len(after) == 5 and not before & after
    assert min(map(int, after)) > max(map(int, before))  # and they keep their order


@pytest.mark.parametrize("field", ["attempt", "info", "cut_ms", "reason", "member"])
def test_a_garbled_record_goes_dead_at_its_claim_and_holds_up_no_other(batcher: Batcher, field: str) -> None:
    """A garbled `cut_ms` or a member that is no UTF-8 once passed the claim's checks and raised
    in the worker out of the whole claim: its neighbours sat leased to no one, and went dead
    unrun with a false "stopped renewing" when their leases ran out."""
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    ids = [r.batch.id for r in batcher.emit_many("s", [{"n": i} for i in range(3)]) if r.batch]
    k = batcher.records.keys_for(ids[1])
    info = batcher.client.hget(k.rec_info, ids[1]).split(b"\n")
    garbled = {"cut_ms": 2, "reason": 1, "member": 0}
    if field in garbled:
        info[garbled[field]] = {"cut_ms": b"not-a-number", "reason": b"why", "member": b"d@v1|\xff"}[field]
    batcher.client.hset(k.rec_attempt if field == "attempt" else k.rec_info, ids[1],  # hostile
                        b"\n".join(info) if field in garbled else b"x")
    claims = batcher.records.claim_some(60_000, 3) + batcher.records.claim_some(60_000, 3)
    healthy = [c for c in claims if c.error is None]
    assert sorted(c.batch.id for c in healthy) == sorted([ids[0], ids[2]])
    for c in claims:  # one the claim's checks let through is a poison claim, buried by the worker
        if c.error is not None:
            assert c.batch.id == ids[1] and "garbled batch record" in c.error
            assert Executor(batcher.records, HandlerResolver(["m"])).run(c).status == Status.POISON
    assert _where(batcher, ids[1]) == ["dead"]
    assert "garbled batch record" in batcher.records.raw(ids[1])["error"]


@pytest.mark.parametrize("field", ["attempt", "info"])
def test_a_record_garbled_while_it_ran_goes_dead_when_its_lease_runs_out(batcher: Batcher,
                                                                         field: str) -> None:
    from distbatch.sweeper import Sweeper

    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    batcher.emit_many("s", [{"n": i} for i in range(2)])
    claims = batcher.records.claim_some(200, 2)  # a worker takes both and dies
    bad, good = claims[0].batch.id, claims[1].batch.id
    k = batcher.records.keys_for(bad)
    batcher.client.hset(k.rec_attempt if field == "attempt" else k.rec_info, bad, "garbage")
    time.sleep(0.3)
    Sweeper(batcher, lease_s=1).run_once()
    assert _where(batcher, bad) == ["dead"] and _where(batcher, good) == ["ready"]


@pytest.mark.parametrize("junk", [b"\xff\xfe", b"9.1", b"abc"],
                         ids=["not-text", "no-such-shard", "no-digits"])
def test_junk_in_the_running_set_or_a_wrong_typed_chart_key_holds_up_no_reclaim(
        one_redis: redis.Redis, namespace: str, clock, junk: bytes) -> None:
    """`9.1` names a shard a one-shard namespace does not have: the sweep once routed its reclaim
    by the id, raised BatchNotFound at every pass, and no lease of any shard was reclaimed."""
    from distbatch.sweeper import Sweeper

    b = Batcher(one_redis, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    b.register("w", version="v1", source="t", handler="m.h", batch={"count": 9, "window": "50ms"})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None and b.records.claim_some(200, 1)  # its worker dies
    k = b.records.keys_for(r.batch.id)
    b.client.zadd(k.running, {junk: 0})  # hostile: sorts first among the expired leases
    b.client.set(b.keys.lateness, "x")  # hostile: the chart's list is a string
    b.emit("t", {"n": 1})  # a window that a sweep cuts late, so its lateness is recorded
    time.sleep(0.3)
    Sweeper(b, lease_s=1).run_once()
    assert _where(b, r.batch.id) == ["ready"]
    assert b.client.zscore(k.running, junk) is None
    assert b.records.count("ready") == 2  # the window was cut too


@pytest.mark.parametrize("junk", [b"abc", b"0.5", b"7.5"])
def test_junk_naming_another_shard_in_a_running_set_is_taken_out_of_it(one_redis: redis.Redis,
                                                                       namespace: str, junk: bytes) -> None:
    """On shard 1, ids that name shard 0 or no shard at all: the reclaim once went to the shard the
    id names, found nothing there, and the member stayed, expired, in shard 1's set for good."""
    from distbatch.sweeper import Sweeper

    b = Batcher(one_redis, namespace=namespace, shards=2, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    k1 = b.shards[1]
    b.client.zadd(k1.running, {junk: 0})
    Sweeper(b, lease_s=1).run_once()
    assert b.client.zscore(k1.running, junk) is None


def test_a_made_up_id_among_the_retries_holds_up_no_promotion(batcher: Batcher) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"},
                     retry={"attempts": 3, "backoff": "1ms"})
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None
    (c,) = batcher.records.claim_some(60_000, 1)
    batcher.records.fail(c.batch.id, c.token, "boom", 1)
    k = batcher.records.keys_for(c.batch.id)
    batcher.client.zadd(k.delayed, {"made-up": 0})  # hostile: no sequence number in it
    time.sleep(0.01)
    shard = batcher.shards.index(k) if k in batcher.shards else 0
    batcher.records.promote(shard, 100)
    assert _where(batcher, c.batch.id) == ["ready"]
    (again,) = batcher.records.claim_some(60_000, 1)  # the made-up one sorts first, has no record
    assert again.batch.id == c.batch.id and again.batch.attempt == 2


def test_an_emit_whose_script_failed_part_way_is_never_reported_stored(batcher: Batcher) -> None:
    """A buffer key a hostile writer made a string: the script's RPUSH fails after its call id was
    taken. The emit must fail, on every kind of Redis: on a cluster the call was once sent again,
    met its call id ("ran before") and reported the event stored when it was not."""
    from distbatch import EmitError

    batcher.register("d", version="v1", source="s", handler="m.h",
                     batch={"count": 5, "window": "1h", "key": "k"})
    for k in batcher.shards:
        batcher.client.set(k.buffer("d@v1", "a"), "not a list")  # on whichever shard holds it
    with pytest.raises(EmitError) as err:
        batcher.emit("s", {"k": "a"})
    assert "WRONGTYPE" in str(err.value) and err.value.stored == []
    with pytest.raises(EmitError) as err:
        batcher.emit_many("s", [{"k": "a"}, {"k": "a"}])
    assert err.value.stored == []


@pytest.mark.parametrize("step", ["claim", "fail", "reclaim", "promote", "replay"])
def test_a_lifecycle_step_that_a_hostile_value_fails_leaves_the_batch_where_it_was(
        batcher: Batcher, step: str) -> None:
    """Each step writes where a batch goes before it takes it out of where it is: a key of the
    wrong type fails the step with the batch still in one of ready / running / delayed / dead."""
    from distbatch.sweeper import Sweeper

    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"},
                     retry={"attempts": 3, "backoff": "1ms"})
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None
    bid, rec = r.batch.id, batcher.records
    k = rec.keys_for(bid)
    if step != "claim":
        (c,) = rec.claim_some(200 if step == "reclaim" else 60_000, 1)
        if step in ("promote", "replay"):
            rec.fail(bid, c.token, "boom", 1 if step == "promote" else -1)
            time.sleep(0.01)
    where = _where(batcher, bid)
    broken = {"claim": k.rec_owner, "fail": k.rec_error, "reclaim": k.rec_error, "promote": k.ready,
              "replay": k.ready}[step]
    batcher.client.delete(broken)
    batcher.client.set(broken, "not a hash")  # hostile
    with pytest.raises(Exception, match="WRONGTYPE"):
        if step == "claim":
            rec.claim_some(60_000, 1)
        elif step == "fail":
            rec.fail(bid, c.token, "boom", 0)
        elif step == "reclaim":
            time.sleep(0.3)
            Sweeper(batcher, lease_s=1)._sweep(batcher.shards.index(k))
        elif step == "promote":
            rec.promote(batcher.shards.index(k), 100)
        else:
            rec.replay(bid)
    batcher.client.delete(broken)  # repaired, so the sets can be read
    assert _where(batcher, bid) == where and len(where) == 1


def test_a_counter_a_hostile_writer_garbled_leaves_the_others_readable(redis_server: RedisServer,
                                                                       namespace: str) -> None:
    """`stats`, the metrics and `counters()` skip a counter that is no integer (or whose name is no
    text) instead of failing the operator's whole view."""
    from click.testing import CliRunner

    from distbatch.cli import main as cli
    from distbatch.stats import collect

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 9, "window": "1h"})
    b.emit_many("s", [{"n": i} for i in range(3)])
    b.client.hset(b.keys.stats, mapping={"events_in:x@v1": "lots", b"\xff\xfe:x@v1": 1})  # hostile
    assert b.counters()["events_in:d@v1"] == 3
    assert collect(b)["bindings"]["d@v1"]["events_in_total"] == 3
    out = CliRunner().invoke(cli, ["stats", "--redis-url", redis_server.url, "--namespace", namespace])
    assert out.exit_code == 0 and "in=3" in out.output, out.output


def test_dead_list_and_show_read_a_garbled_record_and_a_junk_member(redis_server: RedisServer,
                                                                   namespace: str) -> None:
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None
    bid = r.batch.id
    b.client.hset(b.keys.rec_info, bid, "garbage")  # hostile: the claim buries it
    assert b.records.claim_some(60_000, 1) == []
    b.client.zadd(b.keys.dead, {b"\xff\xfe": 1})  # hostile: no batch id at all
    args = ["--redis-url", redis_server.url, "--namespace", namespace]
    listed = CliRunner().invoke(cli, ["dead", "list", *args])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(doc) for doc in listed.output.replace("}\n{", "}\0{").split("\0")]
    mine = next(row for row in rows if row["id"] == bid)
    assert "garbled batch record" in mine["error"] and mine["events"] is None
    assert any("not a batch id" in row["error"] for row in rows)
    shown = CliRunner().invoke(cli, ["dead", "show", bid, *args])
    assert shown.exit_code == 0 and "garbled batch record" in shown.output, shown.output


@pytest.mark.parametrize("junk", [b"\xff\xfe", b"77.5"], ids=["not-text", "another-shard"])
def test_a_made_up_batch_with_a_record_of_its_own_is_buried_not_handed_to_a_worker(
        batcher: Batcher, junk: bytes) -> None:
    """A hostile writer adds an id that is no text, with a well-formed record: a worker's claim
    would fail to read it at every try. The claim buries it; the real batch behind it runs. An
    id naming a shard the namespace does not have was handed out: its worker's complete, renewals
    and the sweeper's reclaim then looked for it on that shard and raised BatchNotFound. It is
    only taken out of `ready`: buried here, no tool that routes by the id could reach it."""
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None
    k = batcher.records.keys_for(r.batch.id)
    batcher.client.zadd(k.ready, {junk: 0})  # sorts first
    batcher.client.hset(k.rec_info, junk, b"d@v1|*\ncount\n0\n1")
    batcher.client.hset(k.rec_events, junk, b"")
    batcher.client.hset(k.rec_attempt, junk, 0)
    (c,) = batcher.records.claim_some(60_000, 2)
    assert c.batch.id == r.batch.id
    assert batcher.client.zscore(k.ready, junk) is None
    assert (batcher.client.zscore(k.dead, junk) is not None) == (junk == b"\xff\xfe")


@pytest.mark.parametrize("definition", [b"not json", b"123", b'{"id": "d"}', "handler", "count", "window"])
def test_a_binding_definition_a_hostile_writer_garbled_is_refused_where_it_is_read(
        batcher: Batcher, caplog: pytest.LogCaptureFixture, definition: bytes | str) -> None:
    """A definition that is no JSON, or that `register` would have refused (a handler that is no
    import path, a count that is no integer): producers once failed every emit of the namespace
    (the registry did not load), and a worker's round raised out of the ticket, the batch going
    dead after its leases ran out with a false "stopped renewing". Now producers skip it with a
    warning, and a worker gives its batch back uncounted, naming what is wrong."""
    import logging

    from distbatch.config import Binding

    batcher.register("d", version="v1", source="s", handler="tests.handlers.record",
                     batch={"count": 1, "window": "1h"})
    batcher.register("e", version="v1", source="t", handler="tests.handlers.record",
                     batch={"count": 1, "window": "1h"})
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None
    good = json.loads(batcher.client.hget(batcher.keys.bindings, "d@v1"))
    garbled = {"handler": {**good, "handler": 123},
               "count": {**good, "batch": {**good["batch"], "count": "9"}},
               # valid JSON past a float: it once raised OverflowError out of every registry load
               "window": {**good, "batch": {**good["batch"], "window_ms": 10**400}}}
    raw = definition if isinstance(definition, bytes) else json.dumps(garbled[definition])
    for k in batcher.shards:
        batcher.client.hset(k.bindings, "d@v1", raw)
        batcher.client.set(k.registry_version, "hostile")  # every reader loads the registry again
    with caplog.at_level(logging.WARNING, "distbatch"):
        (other,) = batcher.emit("t", {"n": 2})  # the other binding still takes its events
    assert other.batch is not None and any("binding_unreadable" in m for m in caplog.messages)
    out = Executor(batcher.records, HandlerResolver(["tests.handlers"]), 10_000).run(
        batcher.records.claim([r.batch.id], 10_000))
    assert out is not None and out.status == Status.UNAVAILABLE
    assert batcher.records.raw(r.batch.id)["error"].startswith("ConfigError: binding d@v1: its definition")
    assert batcher.records.raw(r.batch.id)["attempt"] == 0  # given back uncounted
    with pytest.raises(Exception) as err:
        Binding.from_json(raw)
    assert getattr(err.value, "code", None) == "binding_unreadable"


@pytest.mark.parametrize("tags", [b"not json", b'["{elsewhere}"]', b'["{a}", "{b}"]', b"[]"])
def test_a_layout_a_hostile_writer_garbled_is_a_clear_error_not_keys_elsewhere(
        client, namespace: str, tags: bytes) -> None:
    """The namespace's layout names the hash tag of every key: tags distbatch never wrote would
    send a producer's keys elsewhere, or fail deep in its first call."""
    from distbatch import ConfigError
    from distbatch.keys import Keys

    client.hset(Keys(namespace).meta, "tags", tags)
    with pytest.raises(ConfigError) as err:
        Batcher(client, namespace=namespace, handoff=False).bindings()
    assert err.value.code == "layout_unreadable" and Keys(namespace).meta in str(err.value)


@pytest.mark.parametrize("hostile", ["junk_member", "not_json", "no_batch", "not_a_list", "unregistered"])
def test_a_due_buffer_that_cannot_be_closed_holds_up_no_other(batcher: Batcher, clock, hostile: str) -> None:
    """A due entry the flush could not close once failed every flush of its shard (a Lua error on
    a member without a binding or a definition that is no JSON, WRONGTYPE on a buffer that is no
    list), or, for a binding a `drop` cut short between its steps (unregistered, its buffers not
    drained yet), stayed first among the due ones for ever: with a limit's worth of them the
    sweeper never reached the others' windows, and with fewer it never slept again. Now each is
    put off (its events kept) or no longer tracked, and every other window is cut."""
    from distbatch.sweeper import Sweeper

    b = batcher
    b.register("evil", version="v1", source="e", handler="m.h",
               batch={"count": 100, "window": "1s", "key": "k"})
    b.register("good", version="v1", source="s", handler="m.h",
               batch={"count": 100, "window": "2s", "key": "k"})
    b.emit_many("e", [{"k": f"x{i}"} for i in range(6)])  # due first
    b.emit_many("s", [{"k": f"p{i}"} for i in range(10)])
    evil = [(k, m) for k in b.shards for m in b.client.zrange(k.deadlines, 0, -1) if m.startswith(b"evil@")]
    assert len(evil) == 6
    for k in b.shards:  # a hostile writer's
        if hostile == "junk_member":
            b.client.zadd(k.deadlines, {"junk-without-a-binding": 0})
        elif hostile in ("not_json", "no_batch"):
            b.client.hset(k.bindings, "evil@v1", "not json" if hostile == "not_json" else "{}")
    if hostile == "not_a_list":
        for k, m in evil:
            b.client.delete(k.buffer_prefix.encode() + m)
            b.client.set(k.buffer_prefix.encode() + m, "x")
    if hostile == "unregistered":  # a drop killed between its two steps
        b.run(b.core.registry.unbind("evil@v1"))
    clock.advance("3s")
    sweeper = Sweeper(b, limit=5)
    waits = [sweeper.run_once() for _ in range(4)]
    assert b.counters().get("batches_expired:good@v1") == 10  # every other window cut
    assert b.open_buffers() == (0 if hostile in ("junk_member", "not_a_list") else 6)
    assert waits[-1] > 0  # and the sweeper sleeps: nothing left due
    if hostile == "junk_member":  # its own buffers were healthy: cut too
        assert b.counters().get("batches_expired:evil@v1") == 6
    elif hostile == "not_a_list":  # untracked, the keys left as they were
        assert all(b.client.get(k.buffer_prefix.encode() + m) == b"x" for k, m in evil)
    else:  # kept, put off by a minute: drop() returns them
        assert all(b.client.llen(k.buffer_prefix.encode() + m) == 1 for k, m in evil)
        if hostile == "unregistered":
            assert sorted(e.payload["k"] for e in b.drop("evil@v1")) == [f"x{i}" for i in range(6)]


def test_a_wrong_typed_key_makes_no_hot_loop_of_failed_tickets(redis_server: RedisServer, namespace: str,
                                                               tmp_path: Path) -> None:
    """`SADD {ns}:running junk` with batches ready: each ticket failed at once with RQ's traceback
    (a failed job kept a day), its drain having queued the next: one worker spun at a core, wrote
    megabytes of log and job hashes a second, a burst worker never exited, and nothing said which
    key was at fault."""
    import subprocess
    import sys

    from distbatch.testing import env_with_path

    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    b.emit_many("s", [{"n": i} for i in range(3)])  # three ready batches, tickets queued
    client.sadd(b.keys.running, "junk")
    out = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--burst", "--redis-url",
                          redis_server.url, "--namespace", namespace], env=env_with_path(),
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (f"keys of the wrong type (delete or rename them): {b.keys.running} (a set; distbatch keeps a "
            "zset there)") in out.stderr
    # the two tickets queued, and the one the first drain queued before it failed; then no more
    assert out.stderr.count("drain_refused") <= 3 and "Traceback" not in out.stderr
    failed = [k for k in client.keys("rq:job:*") if client.hget(k, "status") == b"failed"
              and client.hget(k, "origin") == b.keys.queue_name.encode()]  # the server is shared
    assert failed == [] and b.records.count("ready") == 3  # nothing lost: they run once it is fixed


def test_a_wrong_typed_key_of_one_shard_holds_up_no_other_and_is_named(
        redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    """`SADD {ns:0}:running junk` on a sharded namespace: every pass of the sweeper failed at that
    shard's step and ended there, so the other shards' windows were never cut on time (and the
    log said WRONGTYPE, naming no key)."""
    import logging

    from distbatch import ManualClock
    from distbatch.sweeper import Sweeper

    clock = ManualClock(now_ms=1_000_000)
    b = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, shards=2, clock=clock,
                handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 100, "window": "1s", "key": "k"})
    b.emit_many("s", [{"k": f"p{i}"} for i in range(20)])
    open_per_shard = [b.client.zcard(k.deadlines) for k in b.shards]
    assert all(open_per_shard)  # windows open on both shards
    bad = b.shards[0]
    b.client.sadd(bad.running, "junk")
    clock.advance("2s")
    with caplog.at_level(logging.WARNING, "distbatch"):
        Sweeper(b).run_once()
    assert b.client.zcard(b.shards[1].deadlines) == 0  # the healthy shard's windows cut
    assert b.counters().get("batches_expired:d@v1") == open_per_shard[1] + open_per_shard[0]
    said = [r.getMessage() for r in caplog.records if "sweeper_shard_refused" in r.getMessage()]
    assert said and (f"keys of the wrong type (delete or rename them): {bad.running} (a set; distbatch "
                     "keeps a zset there)") in said[0]


def _hostile_view(redis_server: RedisServer, namespace: str) -> tuple[Batcher, list[str]]:
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "1h", "key": "k"},
               retry={"attempts": 1})
    b.emit("s", {"k": "a"})
    return b, ["--redis-url", redis_server.url, "--namespace", namespace]


def test_infinite_scores_and_junk_chart_entries_are_skipped_by_every_reader(
        redis_server: RedisServer, namespace: str) -> None:
    """`ZADD {ns}:deadlines +inf x`, `ZADD {ns}:dead -inf y`, `LPUSH {ns}:lateness garbage`: stats,
    dead list/show, /metrics and the dashboard's chart failed with a traceback or a bare 500
    (`int(inf)`, a line that did not split in two)."""
    from prometheus_client import generate_latest

    from distbatch.metrics import namespace_registry
    from distbatch.stats import collect, lateness

    b, args = _hostile_view(redis_server, namespace)
    b.client.zadd(b.keys.deadlines, {"d@v1|=evil": float("inf"), "d@v1|=evil2": float("-inf")})
    (r,) = b.emit_many("s", [{"k": "x"}] * 5)[-1:]
    assert r.batch is not None
    claim = b.records.claim([r.batch.id], 10_000)
    assert claim is not None
    b.records.fail(r.batch.id, claim.token, "boom", None)
    b.client.zadd(b.keys.dead, {r.batch.id: float("inf")})
    b.client.lpush(b.keys.lateness, "garbage", "x y", "1 2 3")
    data = collect(b)
    assert data["bindings"]["d@v1"]["next_window_closes_in_ms"] > 3_500_000  # the real buffer's
    assert lateness(b, b.server_ms())["series"] == []
    assert b"distbatch_open_buffers" in generate_latest(namespace_registry(b))
    for command in (["stats"], ["stats", "--json"], ["dead", "list"], ["dead", "show", r.batch.id]):
        result = CliRunner().invoke(cli, [*command, *args])
        assert "Traceback" not in result.output and not isinstance(result.exception, OverflowError), \
            (command, result.output)
    listed = CliRunner().invoke(cli, ["dead", "list", *args])
    assert json.loads(listed.output.splitlines()[0])["dead_at_ms"] is None


def test_counters_of_no_binding_and_negative_ones_are_left_out(redis_server: RedisServer,
                                                              namespace: str) -> None:
    """`HSET {ns}:stats events_in:<anything> 1` made a "(dropped)" binding row (and a dozen metric
    series) per field, its name printed to the terminal as written; `-5` a negative counter."""
    from distbatch.stats import collect

    b, _ = _hostile_view(redis_server, namespace)
    b.client.hset(b.keys.stats, mapping={"events_in:\x1b]0;pwned\x07": 1, "events_in:nobody@v1": 7,
                                         "leases_expired": -3, "events_delivered:d@v1": -5})
    data = collect(b)
    assert list(data["bindings"]) == ["d@v1"]
    assert data["leases_expired_total"] == 0 and data["bindings"]["d@v1"]["events_delivered_total"] == 0
    assert data["bindings"]["d@v1"]["events_in_total"] == 1


def test_stats_json_has_every_counter_from_the_start(redis_server: RedisServer, namespace: str) -> None:
    """A new binding had no `events_delivered_total`, a namespace no `retries_total` before its
    first retry: a reader got a KeyError where the answer was 0."""
    _, args = _hostile_view(redis_server, namespace)
    data = json.loads(CliRunner().invoke(cli, ["stats", "--json", *args]).output)
    for field in ("retries_total", "given_back_total", "leases_expired_total", "went_dead_total"):
        assert data[field] == 0, field
    row = data["bindings"]["d@v1"]
    assert row["events_in_total"] == 1 and row["events_delivered_total"] == 0
    assert row["batches_count_total"] == 0 and row["events_purged_total"] == 0


def test_next_close_is_the_earliest_window_however_many_buffers(redis_server: RedisServer,
                                                                namespace: str) -> None:
    """With more open buffers than the sample, the earliest was missed unless sampled: seconds off."""
    from distbatch import ManualClock
    from distbatch.stats import SAMPLE, collect

    clock = ManualClock(now_ms=1_000_000)
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False, clock=clock)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "1h", "key": "k"})
    b.emit("s", {"k": "first"})
    clock.advance("2s")
    b.emit_many("s", [{"k": i} for i in range(SAMPLE + 5000)])
    first = b.client.zscore(b.keys.deadlines, "d@v1|=first")
    data = collect(b)
    assert data["bindings"]["d@v1"]["next_window_closes_in_ms"] == int(first) - clock.now_ms()  # its clock


def test_dead_list_prints_json_lines(redis_server: RedisServer, namespace: str) -> None:
    """Indented objects back to back: neither one JSON document nor JSON lines."""
    b, args = _hostile_view(redis_server, namespace)
    for i in range(3):
        (r,) = b.emit_many("s", [{"k": f"x{i}"}] * 5)[-1:]
        assert r.batch is not None
        claim = b.records.claim([r.batch.id], 10_000)
        assert claim is not None
        b.records.fail(r.batch.id, claim.token, "boom", None)
    out = CliRunner().invoke(cli, ["dead", "list", *args]).output
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3 and all(row["error"] == "boom" for row in rows)


@pytest.mark.parametrize("ttl", [None, 10**9])
def test_a_shard_lease_no_sweeper_holds_is_taken_over(redis_server: RedisServer, namespace: str,
                                                      caplog: pytest.LogCaptureFixture,
                                                      ttl: int | None) -> None:
    """`SET {ns}:sweeper evil`: no sweeper held the shard again, so a failed batch's retry was
    never promoted (nor a dead worker's lease reclaimed), while `stats` still showed a live
    sweeper. Now a value no live sweeper wrote is taken over at the second pass."""
    import logging

    from distbatch.sweeper import Sweeper

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.client.set(b.shards[0].lease, "evil", ex=ttl)
    sweeper = Sweeper(b)
    assert sweeper._own() == []  # once may be a sweeper's that just started: it waits a pass
    with caplog.at_level(logging.WARNING, "distbatch"):
        assert sweeper._own() == [0]
    assert b.client.get(b.shards[0].lease) == sweeper.id.encode()
    assert any("shard_lease_taken shard=0 holder=b'evil'" in m for m in caplog.messages)
    other = Sweeper(b)  # a live sweeper's lease is never taken
    assert other._own() == [] and other._own() == []


def test_a_definition_listed_under_another_bindings_name_is_unreadable(
        batcher: Batcher, caplog: pytest.LogCaptureFixture) -> None:
    """`HSET {ns}:bindings evil <d@v1's definition>`: taken as a binding named `evil` whose events
    went to d@v1's buffers (and whose name, control characters and all, went to stats)."""
    import logging

    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "1h"})
    good = batcher.client.hget(batcher.keys.bindings, "d@v1")
    for k in batcher.shards:
        batcher.client.hset(k.bindings, "evil\x1b]0;x\x07", good)
        batcher.client.set(k.registry_version, "hostile")
    with caplog.at_level(logging.WARNING, "distbatch"):
        results = batcher.emit("s", {"n": 1})
    assert [r.binding for r in results] == ["d@v1"]  # once, under its own name
    assert set(batcher.bindings()) == {"d@v1"}
    assert any("binding_unreadable" in m and "is that of 'd@v1'" in m for m in caplog.messages)


def test_a_worker_runs_no_batch_under_a_definition_of_another_binding(batcher: Batcher) -> None:
    """`HSET {ns}:bindings d@v1 <x@v1's definition>`: d's batches ran x's handler."""
    batcher.register("d", version="v1", source="s", handler="tests.handlers.record",
                     batch={"count": 1, "window": "1h"})
    batcher.register("x", version="v1", source="t", handler="tests.handlers.boom",
                     batch={"count": 1, "window": "1h"})
    (r,) = batcher.emit("s", {"n": 1})
    assert r.batch is not None
    for k in batcher.shards:
        batcher.client.hset(k.bindings, "d@v1", batcher.client.hget(k.bindings, "x@v1"))
    out = Executor(batcher.records, HandlerResolver(["tests.handlers"]), 10_000).run(
        batcher.records.claim([r.batch.id], 10_000))
    assert out is not None and out.status == Status.UNAVAILABLE
    assert "is that of 'x@v1'" in batcher.records.raw(r.batch.id)["error"]
    assert batcher.records.raw(r.batch.id)["attempt"] == 0  # given back uncounted


def test_a_live_sweeper_with_a_longer_lease_keeps_its_shard(redis_server: RedisServer,
                                                            namespace: str) -> None:
    """A sweeper with a 1 s lease pruned the heartbeat of one with a 30 s lease as old, took that
    live sweeper for none, and took its shard over."""
    import time

    from distbatch.sweeper import Sweeper

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    long, short = Sweeper(b, lease_s=30), Sweeper(b, lease_s=1)
    assert long._own() == [0]
    time.sleep(2.2)  # its heartbeat now older than twice the short lease
    assert short._own() == [] and short._own() == []
    assert b.client.get(b.shards[0].lease) == long.id.encode()
