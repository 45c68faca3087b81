"""The single emit's own path (`Batcher.emit` with `onecall.Single`): what each thread keeps per
source and partition key, and the emitter's call key, which keeps its TTL between calls."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from distbatch import Batcher, EmitError, PayloadError, onecall, transport

from .redis_server import RedisServer


@pytest.fixture
def client(one_redis: redis.Redis) -> redis.Redis:
    return one_redis


def _batcher(client: redis.Redis, namespace: str, key: str | None = "k") -> Batcher:
    b = Batcher(client, namespace=namespace, handoff=False, shards=1)
    batch: dict[str, Any] = {"count": 100, "window": "1h"}
    if key is not None:
        batch["key"] = key
    b.register("p", version="v1", source="s", handler="m.h", batch=batch)
    b.emit("s", {"k": "warm"})  # loads the registry: later emits take the single path
    return b


def test_the_call_key_keeps_its_ttl_until_half_of_it_is_gone_and_never_lives_without_one(
        client: redis.Redis, namespace: str) -> None:
    """A call whose TTL was set less than half of it ago keeps it (`SET ... KEEPTTL`); past
    that, the next call sets it again; a call key that was gone (Redis restarted) gets a TTL
    even from a call that keeps it."""
    b = _batcher(client, namespace)
    em = b.transport.emitter()
    call_key = b.keys.call(em.id)
    b.emit("s", {"k": "a"})
    assert em.ttl_due > 0 and client.pttl(call_key) > 590_000
    client.pexpire(call_key, 100_000)
    b.emit("s", {"k": "a"})
    assert 0 < client.pttl(call_key) <= 100_000  # kept, not set again
    em.ttl_due = 0.0  # as if half of the TTL went by
    b.emit("s", {"k": "b"})
    assert client.pttl(call_key) > 590_000
    client.delete(call_key)  # a Redis restart without persistence
    b.emit("s", {"k": "a"})
    assert client.pttl(call_key) > 590_000
    assert len(client.lrange(b.keys.buffer("p@v1", "a"), 0, -1)) == 3


def test_a_call_that_failed_does_not_count_as_having_set_the_ttl(
        client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _batcher(client, namespace)
    em = b.transport.emitter()
    monkeypatch.setattr(transport.Transport, "run_one",
                        lambda self, *a: redis.ConnectionError("Connection refused"))
    with pytest.raises(EmitError) as err:
        b.emit("s", {"k": "a"})
    # one event: it said "emit failed part-way: 0 event(s) stored, ..." for it
    assert str(err.value).startswith("emit failed: the event ") and "part-way" not in str(err.value)
    assert em.ttl_due == 0.0
    monkeypatch.undo()
    b.emit("s", {"k": "a"})
    assert em.ttl_due > 0


@pytest.mark.parametrize("value", [["a"], {"x": 1}, 5, None, True])
def test_a_partition_key_that_is_no_plain_string_takes_the_planned_path(
        client: redis.Redis, namespace: str, value: Any) -> None:
    """Not a str: never looked up among the known keys (a list would not even hash); the planned
    path reads it as any emit does, or names the field."""
    b = _batcher(client, namespace)
    planned = Batcher(client, namespace=namespace + "-planned", handoff=False, shards=1)
    planned.register("p", version="v1", source="s", handler="m.h",
                     batch={"count": 100, "window": "1h", "key": "k"})
    try:
        expected = planned.emit_many("s", [{"k": value}])
    except PayloadError as exc:
        with pytest.raises(PayloadError) as got:
            b.emit("s", {"k": value})
        assert got.value.code == exc.code == "partition_key" and "batch.key='k'" in str(got.value)
        return
    (r,) = b.emit("s", {"k": value})
    assert (r.binding, r.partition_key) == (expected[0].binding, expected[0].partition_key)


def test_more_partition_keys_than_a_thread_keeps_still_go_each_to_its_buffer(
        client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onecall, "KNOWN_KEYS", 3)
    b = _batcher(client, namespace)
    for i in range(8):
        (r,) = b.emit("s", {"k": f"key-{i % 5}", "i": i})
        assert r.partition_key == f"key-{i % 5}"
    single = b.transport.emitter().singles["s"][1]
    assert single is not None
    assert len(single.known) == 3
    for i in range(5):
        events = client.lrange(b.keys.buffer("p@v1", f"key-{i}"), 0, -1)
        assert len(events) == (2 if i < 3 else 1)


def test_a_keyless_binding_and_a_registry_change_between_two_emits(client: redis.Redis,
                                                                   namespace: str) -> None:
    """The thread's `Single` is made again when the registry it was made on is replaced: the next
    emit goes to the binding as it is now."""
    b = _batcher(client, namespace, key=None)
    (r,) = b.emit("s", {"n": 1})
    assert (r.binding, r.partition_key) == ("p@v1", None)
    other = Batcher(client, namespace=namespace, handoff=False, shards=1)
    other.register("p", version="v2", source="s", handler="m.h",
                   batch={"count": 100, "window": "1h", "key": "k"})
    other.drop("p@v1")
    for _ in range(2):  # the first finds its bindings stale and is planned again on the new ones
        (r,) = b.emit("s", {"k": "z"})
        assert (r.binding, r.partition_key) == ("p@v2", "z")
    assert b.transport.emitter().singles["s"][0] is b.registry.cached
    assert len(client.lrange(b.keys.buffer("p@v2", "z"), 0, -1)) == 2


def test_threads_share_the_known_keys_but_each_sends_with_its_own_call_key(
        client: redis.Redis, namespace: str) -> None:
    import threading

    b = _batcher(client, namespace)
    b.emit("s", {"k": "a"})
    seen: list[Any] = []

    def other() -> None:
        (r,) = b.emit("s", {"k": "a"})
        em = b.transport.emitter()
        seen.append((r.partition_key, em.id, em.singles["s"][1].known))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    (pkey, other_id, known), mine = seen[0], b.transport.emitter()
    assert pkey == "a" and known is mine.singles["s"][1].known and other_id != mine.id
    assert client.get(b.keys.call(other_id)) is not None and client.get(b.keys.call(mine.id)) is not None
    assert len(client.lrange(b.keys.buffer("p@v1", "a"), 0, -1)) == 2


def test_a_payload_refused_leaves_nothing_of_its_partition_key_behind(client: redis.Redis,
                                                                      namespace: str) -> None:
    """Too large (or not encodable): `PayloadError`, as `emit_many` says it, and its key is not
    kept; nor is a key longer than `KNOWN_KEY_LENGTH`, whose emit takes the planned path."""
    b = Batcher(client, namespace=namespace, handoff=False, shards=1, max_payload_bytes=1_000)
    b.register("p", version="v1", source="s", handler="m.h", batch={"count": 100, "window": "1h", "key": "k"})
    b.emit("s", {"k": "warm"})
    b.emit("s", {"k": "warm"})
    for i in range(20):
        with pytest.raises(PayloadError) as exc:
            b.emit("s", {"k": f"big-{i}", "pad": "x" * 2_000})
        assert exc.value.code == "payload_too_large"
        with pytest.raises(PayloadError):
            b.emit("s", {"k": f"odd-{i}", "v": {1, 2}})
    single = b.transport.emitter().singles["s"][1]
    assert single is not None and list(single.known) == ["warm"]
    long_key = "x" * (onecall.KNOWN_KEY_LENGTH + 1)
    (r,) = b.emit("s", {"k": long_key})
    assert r.partition_key == long_key and client.llen(b.keys.buffer("p@v1", long_key)) == 1
    assert list(single.known) == ["warm"]


def test_a_single_emit_that_meets_noscript_is_sent_again_as_eval(redis_server: RedisServer,
                                                                  namespace: str) -> None:
    """Not by loading the script first: a user who may EVAL and EVALSHA but not SCRIPT (an ACL,
    a proxy) emits as any other; the event is stored once."""
    admin = redis.Redis.from_url(redis_server.url)
    user = f"{namespace}-noscript"
    admin.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-script")
    limited = redis.Redis(port=redis_server.port, username=user, password="pw")
    b = _batcher(limited, namespace)
    for i in range(2):
        admin.script_flush()
        (r,) = b.emit("s", {"k": "a", "i": i})
        assert r.partition_key == "a"
    assert admin.llen(b.keys.buffer("p@v1", "a")) == 2


def test_a_registry_read_that_finds_nothing_changed_keeps_what_the_threads_made(client: redis.Redis,
                                                                                namespace: str) -> None:
    """`bindings()` (or a `binding()` not cached) reads the registry again: when it has not
    changed, the snapshot stays the same object, and single emits keep their `Single` and known
    keys (an app that lists its bindings now and then does not start them over)."""
    b = _batcher(client, namespace)
    b.emit("s", {"k": "a"})
    before = b.transport.emitter().singles["s"]
    assert set(b.bindings()) == {"p@v1"} and b.binding("p@v9") is None
    b.emit("s", {"k": "a"})
    assert b.transport.emitter().singles["s"] is before
