"""SPEC §1, one rule per test, on a real redis-server and on fakeredis, with a manual clock."""

from __future__ import annotations

import json
import logging

import pytest

from distbatch import Batcher, ConfigError, ManualClock


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> str:
    """Every behaviour test here runs on Batcher and on AsyncBatcher."""
    return str(request.param)

H = "tests.handlers.noop"


def reg(b: Batcher, count: int = 3, window: str = "10s", **extra: object) -> str:
    return b.register("t", version="v1", source="src", handler=H,
                      batch={"count": count, "window": window, **extra})


def payloads(results: list) -> list:
    return [e.payload for r in results if r.batch for e in r.batch.events]


def test_fires_at_exactly_count_in_arrival_order(batcher: Batcher) -> None:
    reg(batcher, count=3)
    results = [batcher.emit("src", {"n": i}) for i in range(3)]
    assert [r[0].batch for r in results[:2]] == [None, None]
    batch = results[2][0].batch
    assert batch is not None and batch.reason == "count" and batch.binding == "t@v1"
    assert [e.payload["n"] for e in batch.events] == [0, 1, 2]
    assert not batch.discarded and batch.partition_key is None
    assert batcher.flush_expired() == []


def test_next_event_after_fire_opens_new_buffer_and_window(
    batcher: Batcher, clock: ManualClock
) -> None:
    reg(batcher, count=2, window="10s")
    batcher.emit_many("src", [{"n": 0}, {"n": 1}])
    clock.advance("9s")
    batcher.emit("src", {"n": 2})  # opens a fresh window at t=9s, deadline t=19s
    clock.advance("9s")
    assert batcher.flush_expired() == []
    clock.advance("1s")
    (batch,) = batcher.flush_expired()
    assert [e.payload["n"] for e in batch.events] == [2]


def test_window_counts_from_first_event_and_is_not_extended(
    batcher: Batcher, clock: ManualClock
) -> None:
    reg(batcher, count=10, window="10s")
    batcher.emit("src", {"n": 0})
    clock.advance("6s")
    batcher.emit("src", {"n": 1})
    clock.advance(3999)
    assert batcher.flush_expired() == []
    clock.advance(1)  # exactly first + window: run out (inclusive)
    (batch,) = batcher.flush_expired()
    assert batch.reason == "expired" and [e.payload["n"] for e in batch.events] == [0, 1]


def test_fire_partial_at_expiry(batcher: Batcher, clock: ManualClock) -> None:
    reg(batcher, count=5, window="1m", expire_action="fire")
    batcher.emit_many("src", [{"n": i} for i in range(3)])
    clock.advance("1m")
    (batch,) = batcher.flush_expired()
    assert not batch.discarded and len(batch.events) == 3 and batch.reason == "expired"
    claim = batcher.records.claim([batch.id], 1000)
    assert claim is not None and [e.payload["n"] for e in claim.batch.events] == [0, 1, 2]


def test_discard_at_expiry_records_and_never_hands_off(
    batcher: Batcher, clock: ManualClock, client
) -> None:
    reg(batcher, count=5, window="1m", expire_action="discard")
    batcher.emit_many("src", [{"n": i} for i in range(3)])
    clock.advance("1m")
    (batch,) = batcher.flush_expired()
    assert batch.discarded and [e.payload["n"] for e in batch.events] == [0, 1, 2]
    assert batcher.records.claim([batch.id], 1000) is None
    stats = batcher.counters()
    assert stats["events_discarded:t@v1"] == 3 and stats["batches_discarded:t@v1"] == 1
    assert batcher.records.count("ready") == 0


def test_keyed_buffers_are_independent_with_own_windows(
    batcher: Batcher, clock: ManualClock
) -> None:
    reg(batcher, count=2, window="10s", key="repo")
    batcher.emit("src", {"repo": "a", "n": 0})
    clock.advance("5s")
    batcher.emit("src", {"repo": "b", "n": 1})
    r = batcher.emit("src", {"repo": "a", "n": 2})
    assert r[0].partition_key == "a" and [e.payload["n"] for e in r[0].batch.events] == [0, 2]
    clock.advance("9999ms")  # b opened at 5s: its deadline is 15s
    assert batcher.flush_expired() == []
    clock.advance(1)
    (batch,) = batcher.flush_expired()
    assert batch.partition_key == "b" and [e.payload["n"] for e in batch.events] == [1]


def test_nested_dot_path(batcher: Batcher) -> None:
    reg(batcher, count=2, key="pull_request.user.login")
    batcher.emit("src", {"pull_request": {"user": {"login": "ann"}}})
    batcher.emit("src", {"pull_request": {"user": {"login": "bob"}}})
    r = batcher.emit("src", {"pull_request": {"user": {"login": "ann"}}})
    assert r[0].partition_key == "ann" and len(r[0].batch.events) == 2


@pytest.mark.parametrize(
    "payload", [{}, {"pull_request": None}, {"pull_request": {"user": "x"}},
                {"pull_request": [1, 2]}, {"pull_request": {"user": {}}}],
)
def test_missing_path_goes_to_keyless_buffer(batcher: Batcher, payload: dict) -> None:
    reg(batcher, count=2, key="pull_request.user.login")
    assert batcher.emit("src", payload)[0].partition_key is None
    r = batcher.emit("src", {"other": 1})
    assert r[0].partition_key is None and len(r[0].batch.events) == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "null"), (True, "true"), (False, "false"), (42, "42"), (1.5, "1.5"),
     ({"a": 1, "b": [1, 2]}, '{"a":1,"b":[1,2]}'), ([1, "x"], '[1,"x"]'), ("", ""),
     ("plain", "plain"), (1e16, "1e+16"), (1e-07, "1e-07"),
     (b"ab", "\"b'ab'\""), (b"\x00x", "\"b'\\\\x00x'\"")],  # as the README's wire format says
)
def test_partition_key_stringification(batcher: Batcher, value: object, expected: str) -> None:
    reg(batcher, count=2, key="k")
    assert batcher.emit("src", {"k": value})[0].partition_key == expected


def test_empty_string_key_is_distinct_from_keyless(batcher: Batcher, clock: ManualClock) -> None:
    reg(batcher, count=5, key="k")
    batcher.emit("src", {"k": ""})
    batcher.emit("src", {})
    clock.advance("10s")
    keys = sorted((b.partition_key is None, len(b.events)) for b in batcher.flush_expired())
    assert keys == [(False, 1), (True, 1)]


def test_cap_drops_oldest_with_warning_and_counter(
    batcher: Batcher, clock: ManualClock, client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="distbatch"):
        reg(batcher, count=2000, window="1h", key="k")
    assert any(getattr(r, "event", "") == "count_above_cap" for r in caplog.records)
    caplog.clear()
    results = batcher.emit_many("src", [{"k": "a", "n": i} for i in range(1028)])
    singles = [batcher.emit("src", {"k": "a", "n": i}) for i in (1028, 1029)]  # accumulate_one's cap
    assert [r.overflowed for (r,) in singles] == [1, 1]
    assert sum(r.overflowed for r in results) == 4
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "buffer_overflow"]
    assert [w.dropped for w in warnings] == [4, 1, 1]  # one line per call and buffer, not per event
    assert warnings[0].binding == "t@v1" and warnings[0].partition == "a"
    assert batcher.counters().get("events_overflowed:t@v1") == 6
    clock.advance("1h")
    (batch,) = batcher.flush_expired()
    assert [e.payload["n"] for e in batch.events] == list(range(6, 1030))


def test_emits_into_a_full_buffer_keep_the_log_bounded(
    batcher: Batcher, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each emit into a buffer at its cap logged a `buffer_overflow` line with the whole partition
    key: 100 emits with a 100 KB key wrote 10 MB of log (the review's run). Now a line holds at
    most 200 characters of the key, and a batcher writes at most 20 such lines a minute."""
    reg(batcher, count=2000, window="1h", key="k")
    big = "p" * 5_000  # 1,024 of them in one call: fakeredis parses a command in quadratic time
    batcher.emit_many("src", [{"k": big, "n": i} for i in range(1024)])
    with caplog.at_level(logging.WARNING, logger="distbatch"):
        for i in range(100):
            (r,) = batcher.emit("src", {"k": big, "n": i})
            assert r.overflowed == 1  # every one still counted and reported
    lines = [m for m in caplog.messages if "buffer_overflow" in m]
    assert len(lines) == 20 and max(map(len, lines)) < 500, (len(lines), max(map(len, lines)))
    assert batcher.counters().get("events_overflowed:t@v1") == 100


def test_drop_returns_pending_and_nothing_fires_after(
    batcher: Batcher, clock: ManualClock, client
) -> None:
    key = reg(batcher, count=3, window="10s", key="k")
    batcher.emit_many("src", [{"k": "a", "n": 0}, {"k": "b", "n": 1}, {"k": "a", "n": 2}])
    pending = batcher.drop(key)
    assert sorted(e.payload["n"] for e in pending) == [0, 1, 2]
    assert batcher.emit("src", {"k": "a", "n": 3}) == []  # binding gone everywhere
    clock.advance("1h")
    assert batcher.flush_expired() == []
    assert not [k for k in client.keys(batcher.keys.base + ":buf:*")]
    assert batcher.open_buffers() == 0
    assert batcher.drop(key) == []


def test_drop_seen_by_another_instance_with_a_stale_cache(make_batcher) -> None:
    a, b = make_batcher(), make_batcher()
    key = reg(a, count=3)
    assert len(b.emit("src", {"n": 0})) == 1  # b caches the binding
    a.drop(key)
    assert b.emit("src", {"n": 1}) == []


def test_a_dropped_binding_keeps_its_config_for_the_batches_it_cut(make_batcher) -> None:
    """A dropped binding's definition still governs the batches it cut, so the same id@version
    registered again with another config is a conflict (SPEC §4: a new behaviour needs a new
    version), and writes nothing; with the config it had, it is taken back, and an instance that
    emitted under it before the drop emits under it again."""
    a, b = make_batcher(), make_batcher()
    key = reg(a, count=5)
    assert [r.batch for r in b.emit("src", {"n": 0})] == [None]
    a.drop(key)
    epoch = a.client.get(a.keys.registry_version)
    with pytest.raises(ConfigError) as info:
        reg(a, count=2)
    assert info.value.code == "binding_conflict" and "was dropped" in str(info.value)
    assert key in str(info.value) and "batch.count: 5 stored, 2 asked" in str(info.value)
    assert a.client.get(a.keys.registry_version) == epoch  # nothing written
    assert a.client.hget(a.keys.bindings, key) is None
    assert json.loads(a.client.hget(a.keys.dropped, key))["batch"]["count"] == 5
    assert reg(a, count=5) == key  # the config it had: taken back
    assert a.client.hget(a.keys.dropped, key) is None
    cut = [r.batch for n in range(1, 6) for r in b.emit("src", {"n": n})]
    assert [None if c is None else [e.payload["n"] for e in c.events] for c in cut] == [
        None, None, None, None, [1, 2, 3, 4, 5]]


def test_register_seen_by_another_instance(make_batcher) -> None:
    a, b = make_batcher(), make_batcher()
    assert b.emit("src", {"n": 0}) == []  # b caches "no bindings"
    reg(a, count=2)
    assert len(b.emit("src", {"n": 1})) == 1


def test_several_bindings_on_one_source(batcher: Batcher) -> None:
    batcher.register("a", version="v1", source="src", handler=H, batch={"count": 1, "window": "1s"})
    batcher.register("b", version="v1", source="src", handler=H,
                     batch={"count": 2, "window": "1s", "key": "k"})
    batcher.register("c", version="v1", source="other", handler=H,
                     batch={"count": 1, "window": "1s"})
    r = batcher.emit("src", {"k": "x"})
    assert sorted((x.binding, x.partition_key, x.batch is not None) for x in r) == [
        ("a@v1", None, True), ("b@v1", "x", False)]


def test_emit_many_results_in_order_one_per_event_per_binding(batcher: Batcher) -> None:
    reg(batcher, count=4, key="k")
    results = batcher.emit_many("src", [{"k": i % 2, "n": i} for i in range(10)])
    assert [r.partition_key for r in results] == ["0", "1"] * 5
    fired = [(r.partition_key, [e.payload["n"] for e in r.batch.events])
             for r in results if r.batch]
    assert fired == [("0", [0, 2, 4, 6]), ("1", [1, 3, 5, 7])]


def test_emit_many_spans_chunks(make_batcher) -> None:
    b = make_batcher(chunk_size=7)
    reg(b, count=5)
    results = b.emit_many("src", [{"n": i} for i in range(23)])
    assert len(results) == 23
    assert [[e.payload["n"] for e in r.batch.events] for r in results if r.batch] == [
        list(range(i, i + 5)) for i in range(0, 20, 5)]


def test_batch_ids_are_unique_and_stable(batcher: Batcher, clock: ManualClock) -> None:
    reg(batcher, count=2, key="k")
    results = batcher.emit_many("src", [{"k": i % 3} for i in range(12)])
    ids = [r.batch.id for r in results if r.batch]
    clock.advance("1h")
    ids += [b.id for b in batcher.flush_expired()]
    assert len(ids) == len(set(ids)) == 6
    assert batcher.records.get_batch(ids[0]).id == ids[0]


def test_namespaces_are_isolated(make_batcher) -> None:
    a, b = make_batcher(namespace="nsa"), make_batcher(namespace="nsb")
    reg(a, count=1)
    assert b.emit("src", {}) == []
    assert len(a.emit("src", {})) == 1
    a.drop("t@v1")


def test_server_clock_window(make_batcher) -> None:
    from distbatch.clock import ServerClock

    b = make_batcher(clock=ServerClock())
    reg(b, count=5, window="50ms")
    b.emit("src", {"n": 1})
    assert b.flush_expired() == []
    import time

    time.sleep(0.08)
    (batch,) = b.flush_expired()
    assert batch.events[0].payload == {"n": 1}


def test_wake_is_published_only_when_a_new_earliest_deadline_appears(
    make_batcher, clock: ManualClock
) -> None:
    """Sweepers sleep until the earliest deadline of a shard; accumulate must wake them exactly
    then (one shard here, so every buffer shares one earliest deadline)."""
    batcher = make_batcher(shards=1)
    reg(batcher, count=100, window="10s", key="k")
    short = batcher.register("s", version="v1", source="other", handler=H,
                             batch={"count": 100, "window": "1s", "key": "k"})
    sub = batcher.client.pubsub()
    sub.subscribe(batcher.keys.wake)
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    got: list[int] = []

    def pushed() -> list[int]:
        while (message := sub.get_message(timeout=0.05)) is not None:
            got.append(int(message["data"]))
        return got

    batcher.emit("src", {"k": "a"})  # first window: deadline now + 10s is the new earliest
    assert pushed() == [clock.now_ms() + 10_000]
    batcher.emit_many("src", [{"k": "a"}, {"k": "b"}])  # appends, and a later deadline
    assert len(pushed()) == 1
    clock.advance("1s")
    batcher.emit_many("other", [{"k": "x"}, {"k": "y"}])  # deadline now + 1s < the 10s one
    assert pushed()[1:] == [clock.now_ms() + 1_000]
    batcher.emit("src", {"k": "c"})
    assert len(pushed()) == 2
    batcher.drop(short)
    clock.advance("9s")
    assert sorted(b.partition_key for b in batcher.flush_expired()) == ["a", "b"]
    batcher.emit("src", {"k": "d"})  # c is still open, earlier than d: no wake
    assert len(pushed()) == 2
    clock.advance("10s")
    assert sorted(b.partition_key for b in batcher.flush_expired()) == ["c", "d"]
    # the deadline set is empty now, so the next window opened is the earliest
    batcher.emit("src", {"k": "e"})
    assert pushed()[-1] == clock.now_ms() + 10_000 and len(pushed()) == 3
    # a window opened and cut by the same call (count 1, or a chunk that fills it) leaves
    # nothing to wake for; one that stays open beside it still wakes
    clock.advance("10s")
    assert sorted(b.partition_key for b in batcher.flush_expired()) == ["e"]  # the deadline set is empty
    batcher.register("one", version="v1", source="ones", handler=H, batch={"count": 1, "window": "1s"})
    batcher.register("two", version="v1", source="twos", handler=H,
                     batch={"count": 2, "window": "2s", "key": "k"})
    (r,) = batcher.emit_many("ones", [{"n": 0}])
    (s,) = batcher.emit("ones", {"n": 1})
    assert r.batch is not None and s.batch is not None and len(pushed()) == 3
    results = batcher.emit_many("twos", [{"k": "a"}, {"k": "a"}, {"k": "b"}])
    assert results[1].batch is not None and pushed()[3:] == [clock.now_ms() + 2_000]
    sub.close()


def test_late_event_never_joins_an_expired_buffer(batcher: Batcher, clock: ManualClock) -> None:
    """No sweeper ran: the late event closes the expired buffer (cut as `expired`, handed off) and
    opens a fresh window of its own."""
    handed: list[list[str]] = []
    batcher.on_cut = lambda ids: handed.append(list(ids))
    reg(batcher, count=5, window="1m")
    batcher.emit("src", {"n": 0})
    clock.advance("1m")
    (r,) = batcher.emit("src", {"n": 1})
    assert r.batch is None and r.expired is not None and not r.expired.discarded
    assert r.expired.reason == "expired" and [e.payload["n"] for e in r.expired.events] == [0]
    assert handed == [[r.expired.id]]
    assert batcher.flush_expired() == []  # the new window opened at the late event
    clock.advance("1m")
    (late,) = batcher.flush_expired()
    assert [e.payload["n"] for e in late.events] == [1]


def test_late_event_never_completes_a_count_batch_with_an_expired_one(
    batcher: Batcher, clock: ManualClock
) -> None:
    reg(batcher, count=2, window="1m")
    batcher.emit("src", {"n": 0})
    clock.advance("1m")
    (r,) = batcher.emit("src", {"n": 1})
    assert r.batch is None and r.expired is not None
    assert [e.payload["n"] for e in r.expired.events] == [0]
    (r,) = batcher.emit("src", {"n": 2})
    assert r.batch is not None and [e.payload["n"] for e in r.batch.events] == [1, 2]


def test_late_event_discards_the_expired_buffer_of_a_discard_binding(
    batcher: Batcher, clock: ManualClock, client
) -> None:
    reg(batcher, count=5, window="1m", expire_action="discard")
    batcher.emit_many("src", [{"n": 0}, {"n": 1}])
    clock.advance("61s")
    (r,) = batcher.emit("src", {"n": 2})
    assert r.expired is not None and r.expired.discarded and len(r.expired.events) == 2
    stats = batcher.counters()
    assert stats["events_discarded:t@v1"] == 2 and batcher.records.count("ready") == 0


def test_dropping_a_binding_that_does_not_exist_is_an_error_and_writes_nothing(batcher: Batcher) -> None:
    """`drop("pr-digest")` (no version) or a typo once returned [] and changed the registry epoch:
    every emitter's next call was refused and planned again, for nothing."""
    from distbatch import ConfigError

    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h"})
    epoch = batcher.client.get(batcher.keys.registry_version)
    for typo in ("d", "dd@v1"):
        with pytest.raises(ConfigError) as err:
            batcher.drop(typo)
        assert err.value.code == "binding_unknown" and "d@v1" in str(err.value)
    assert batcher.client.get(batcher.keys.registry_version) == epoch
    batcher.emit("s", {"n": 1})
    assert [e.payload for e in batcher.drop("d@v1")] == [{"n": 1}]
    assert batcher.drop("d@v1") == []  # dropped before: known, nothing left


def test_a_sweep_that_discards_a_window_logs_how_many_events_went(
        make_batcher, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """A sweeper asks for no events back: its log line once said events=0 for every discard."""
    import logging

    b = make_batcher(clock=clock, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h",
               batch={"count": 9, "window": "1s", "expire_action": "discard"})
    b.emit_many("s", [{"n": i} for i in range(3)])
    clock.advance("2s")
    with caplog.at_level(logging.INFO, "distbatch"):
        for shard in range(len(b.shards)):
            b.flush_step(100, with_events=False, shard=shard)
    assert any("batch_discarded" in m and "events=3" in m for m in caplog.messages), caplog.messages


def _lose_namespace(b: Batcher) -> None:
    """What a Redis restarted without persistence (or flushed) leaves of a namespace: nothing."""
    for node_keys in [list(b.client.scan_iter(match=f"{{{b.keys.namespace}*", count=1000))]:
        for key in node_keys:
            b.client.delete(key)
    assert not list(b.client.scan_iter(match=f"{{{b.keys.namespace}*"))


def test_an_app_registers_its_bindings_again_after_redis_lost_them(
        make_batcher, caplog: pytest.LogCaptureFixture) -> None:
    """A running app's events went nowhere after Redis lost its data: emit returned [] with a
    `source_unbound` warning until the app was restarted. Each instance now stores again the
    bindings it registered (and the layout), then takes the event."""
    app, other = make_batcher(), make_batcher()
    reg(app, count=2)
    other.register("audit", version="v1", source="src", handler=H, batch={"count": 5, "window": "1h"})
    assert len(app.emit("src", {"n": 0})) == 2
    _lose_namespace(app)
    with caplog.at_level(logging.WARNING, "distbatch"):
        first = app.emit("src", {"n": 1})
    assert [r.binding for r in first] == ["t@v1"]  # the other instance stores its own at its next call
    assert any("registry_restored" in m and "t@v1" in m for m in caplog.messages)
    assert not any("source_unbound" in m for m in caplog.messages)
    assert app.client.exists(app.keys.meta)  # the layout stored again, for workers started after
    second = app.emit("src", {"n": 2})
    assert payloads(second) == [{"n": 1}, {"n": 2}]
    assert sorted(r.binding for r in other.emit("src", {"n": 3})) == ["audit@v1", "t@v1"]


def test_a_producer_that_registered_nothing_says_when_redis_lost_the_bindings(
        make_batcher, caplog: pytest.LogCaptureFixture) -> None:
    """A producer that registers nothing (another service, or an app after its deploy step
    registered) has nothing to store again when Redis loses its data: its emits returned [] with
    one `source_unbound` warning per source, "a typo, or the wrong namespace?", about ~2,480
    events of the lifecycle review's run. Now an error says the bindings are gone and why, once
    per loss; a drop of the last binding (the epoch moves on) is no loss."""
    app, producer = make_batcher(), make_batcher()
    key = reg(app, count=5)
    assert len(producer.emit("src", {"n": 0})) == 1
    app.drop(key)
    with caplog.at_level(logging.WARNING, "distbatch"):
        assert producer.emit("src", {"n": 1}) == []
    assert not any("registry_lost" in m for m in caplog.messages)  # dropped, not lost
    app.register("t", version="v2", source="src", handler=H, batch={"count": 5, "window": "10s"})
    assert len(producer.emit("src", {"n": 2})) == 1
    _lose_namespace(app)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "distbatch"):
        assert producer.emit("src", {"n": 3}) == []
        assert producer.emit_many("src", [{"n": 4}, {"n": 5}]) == []
    lost = [r for r in caplog.records if getattr(r, "event", "") == "registry_lost"]
    assert len(lost) == 1 and lost[0].levelname == "ERROR", caplog.messages
    assert "restarted without persistence" in lost[0].getMessage()


def test_a_binding_dropped_by_another_instance_is_not_taken_back(make_batcher) -> None:
    app, operator = make_batcher(), make_batcher()
    key = reg(app)
    app.emit("src", {"n": 1})
    operator.drop(key)
    assert app.emit("src", {"n": 2}) == []
    assert key not in app.bindings() and key not in operator.bindings()
