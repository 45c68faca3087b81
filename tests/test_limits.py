"""Limits and bad input at scale: huge partition keys, key values JSON has no text for, payloads
that do not pack, a Redis out of memory, size options given wrong."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from distbatch import Batcher, ConfigError, EmitError, ManualClock, PayloadError, roundtrip
from distbatch import keys as keys_mod
from distbatch.errors import short
from distbatch.testing import RedisServer

from .test_serve import TOKEN, Server


def _batcher(client: redis.Redis, namespace: str, clock: ManualClock, binding: str = "a",
             count: int = 2, **kw: object) -> Batcher:
    b = Batcher(client, namespace=namespace, clock=clock, handoff=False, **kw)  # type: ignore[arg-type]
    b.register(binding, version="v1", source="s", batch={"count": count, "window": "10m", "key": "k"},
               handler="tests.handlers.record")
    return b


# 1 -------------------------------------------------------------------------------------------
def test_member_cache_does_not_keep_huge_partition_keys(one_redis: redis.Redis, namespace: str,
                                                        clock: ManualClock) -> None:
    """keys._members keeps up to 65,536 entries per binding whatever their size: 40 events with
    200 KB partition keys leave ~16 MB in the emitting process after the call returned (65,536
    such keys would be tens of GB). `serve` shares it with every HTTP client."""
    binding = f"huge{namespace}"
    b = _batcher(one_redis, namespace, clock, binding=binding, count=1)
    b.emit_many("s", [{"k": f"{i:04d}" + "x" * 200_000} for i in range(40)])
    cache = keys_mod._members.get(f"{binding}@v1", {})
    kept = sum(len(k or "") + len(v) for k, v in cache.items())
    assert kept < 2_000_000, f"{kept} bytes of partition keys kept in the member cache after the call"


# 2 -------------------------------------------------------------------------------------------
def test_equal_objects_with_non_str_keys_share_a_buffer(one_redis: redis.Redis, namespace: str,
                                                        clock: ManualClock) -> None:
    """SPEC §1: objects as compact JSON 'with object fields in sorted order (so equal objects are
    one key)'. Two equal dicts with an int and a str key get two buffers (the repr fallback keeps
    insertion order)."""
    b = _batcher(one_redis, namespace, clock, count=2)
    first = b.emit("s", {"k": {1: 1, "a": 2}})
    second = b.emit("s", {"k": {"a": 2, 1: 1}})
    assert first[0].partition_key == second[0].partition_key
    assert second[0].batch is not None and len(second[0].batch.events) == 2


# 3 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, bad", [
    (("user", "when"), datetime.date(2024, 1, 1)),
    (("zz_amount",), 2 ** 70),
    (("order", "lines", "tags"), {"a", "b"}),
])
def test_unencodable_payload_error_names_the_field_and_the_value(
        one_redis: redis.Redis, namespace: str, clock: ManualClock, path: tuple[str, ...],
        bad: object) -> None:
    """'bad input gets a clear error: the error names the field and the value'. The message is a
    reprlib repr of the whole payload (6 fields, 3 levels, 40 chars) and msgpack's own text: the
    field is never named and the value is elided once it is past the 6th field or 3 levels deep."""
    b = _batcher(one_redis, namespace, clock)
    payload: dict[str, object] = {f"f{i:02d}": i for i in range(12)}
    node = payload
    for part in path[:-1]:
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[path[-1]] = bad
    with pytest.raises(PayloadError) as info:
        b.emit_many("s", [{"k": "x"}, payload])
    message = str(info.value)
    assert info.value.event == 1
    assert ".".join(path) in message, message
    assert short(bad)[:20] in message, message  # reprlib: a set's members sorted
    assert b.counters().get("events_in:a@v1", 0) == 0


# 4 -------------------------------------------------------------------------------------------
@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    server = RedisServer("--maxmemory-policy", "noeviction").start()
    yield server
    server.cleanup()


def test_out_of_memory_refusal_is_reported_as_not_stored(small_redis: RedisServer, namespace: str,
                                                         clock: ManualClock) -> None:
    """Redis refuses a script with OOM only before its first write (no side effects yet), so an
    OutOfMemoryError from accumulate means nothing of that call was written. EmitError still
    puts every event of it in `uncertain` ('may or may not be stored')."""
    client = redis.Redis.from_url(small_redis.url)
    b = _batcher(client, namespace, clock, count=3)
    b.emit("s", {"k": "warm"})
    client.config_set("maxmemory", "1")
    try:
        with pytest.raises(EmitError) as info:
            b.emit_many("s", [{"k": "a"}, {"k": "b"}, {"k": "c"}])
        with pytest.raises(EmitError) as one:
            b.emit("s", {"k": "d"})
    finally:
        client.config_set("maxmemory", "0")
    assert b.counters()["events_in:a@v1"] == 1  # indeed nothing of either call was stored
    assert info.value.stored == [] and info.value.uncertain == [], str(info.value)
    assert info.value.not_sent == [0, 1, 2]
    assert one.value.uncertain == [] and one.value.not_sent == [0], str(one.value)


def test_http_out_of_memory_without_idempotency_key_is_redis_refused(
        small_redis: RedisServer, tmp_path: Path, namespace: str) -> None:
    """README: 503 `redis_refused` — 'nothing stored: Redis answered with an error, such as out of
    memory'. Without an Idempotency-Key the request gets `redis_failed_part_way`, every event
    'uncertain', though nothing was stored."""
    b = Batcher.from_url(small_redis.url, namespace=namespace, handoff=False)
    b.register("h", version="v1", source="orders", handler="tests.handlers.record",
               batch={"count": 3, "window": "1h", "key": "shop"})
    server = Server(small_redis.url, tmp_path, namespace)
    admin = redis.Redis.from_url(small_redis.url)
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=10) as api:
            api.post("/v1/sources/orders/events", content=b'{"shop": "warm"}',
                     headers={"Content-Type": "application/json"})  # scripts loaded, bindings read
            admin.config_set("maxmemory", "1")
            try:
                r = api.post("/v1/sources/orders/events", content=json.dumps([{"shop": "a"}, {"shop": "b"}]),
                             headers={"Content-Type": "application/json"})
            finally:
                admin.config_set("maxmemory", "0")
        assert b.counters()["events_in:h@v1"] == 1
        assert r.status_code == 503 and r.json()["code"] == "redis_refused", r.text
    finally:
        server.stop()
        b.close()


def test_oom_on_a_hidden_retry_of_the_roundtrip_is_not_reported_as_not_sent(
        small_redis: RedisServer, namespace: str, clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`roundtrip._exchange` retries under the connection's own policy (redis.Redis()'s default:
    10 retries). Its first attempt ran the script (stored the event), the reply was lost, and the
    hidden retry met `maxmemory`: the OutOfMemoryError is taken by `not_stored` as "nothing was
    written" and the event is reported not_sent, though it is stored (a re-emit duplicates it)."""
    client = redis.Redis(host="127.0.0.1", port=small_redis.port)  # default: connections retry
    admin = redis.Redis(host="127.0.0.1", port=small_redis.port)
    b = Batcher(client, namespace=namespace, clock=clock, handoff=False)
    b.register("a", version="v1", source="s", batch={"count": 10, "window": "10m"},
               handler="tests.handlers.record")
    b.emit("s", {"k": "warm"})  # scripts loaded, registry and single head cached
    real = roundtrip._round_trip
    calls: list[int] = []

    def lossy(conn: Any, packed: list[bytes], n: int) -> list[Any]:
        replies = real(conn, packed, n)
        if not calls and isinstance(replies[0], list):  # it ran; then Redis fills up, the reply is lost
            calls.append(1)
            admin.config_set("maxmemory", "1")
            conn.disconnect()
            raise redis.ConnectionError("reply lost")
        return replies

    monkeypatch.setattr(roundtrip, "_round_trip", lossy)
    try:
        with pytest.raises(EmitError) as info:
            b.emit("s", {"k": "x"})
    finally:
        monkeypatch.setattr(roundtrip, "_round_trip", real)
        admin.config_set("maxmemory", "0")
    assert b.counters()["events_in:a@v1"] == 2  # the event IS stored
    assert info.value.not_sent == [], str(info.value)  # HEAD: [0] ("nothing was stored")


# 5 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value", [
    ("max_payload_bytes", "1MB"), ("max_payload_bytes", None),
    ("chunk_size", "100"), ("chunk_size", None),
])
def test_batcher_limits_are_checked_when_given(one_redis: redis.Redis, namespace: str, clock: ManualClock,
                                               option: str, value: object) -> None:
    """Bad config 'raises ConfigError naming the field and the value'. `max_payload_bytes` and
    `chunk_size` are taken unchecked: a string or None is a bare TypeError (no field named) at
    the first emit_many, long after construction."""
    with pytest.raises(ConfigError) as info:
        Batcher(one_redis, namespace=namespace, clock=clock, handoff=False, **{option: value})  # type: ignore[arg-type]
    assert option in str(info.value) and repr(value) in str(info.value)
