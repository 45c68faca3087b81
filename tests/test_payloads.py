"""Bad payloads get a clear error and write nothing, not even the good events beside them."""

from __future__ import annotations

import datetime

import pytest

from distbatch import Batcher, PayloadError


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> str:
    """Every behaviour test here runs on Batcher and on AsyncBatcher."""
    return str(request.param)


@pytest.fixture
def bound(batcher: Batcher) -> Batcher:
    batcher.register("d", version="v1", source="s", handler="m.h",
                     batch={"count": 100, "window": "1m", "key": "k"})
    return batcher


def _buffered(b: Batcher, client) -> int:
    return sum(client.llen(k) for k in client.keys(b.keys.buffer_prefix + "*"))


@pytest.mark.parametrize(
    ("payload", "code"),
    [({"when": datetime.datetime(2026, 1, 1)}, "payload_unencodable"),
     ({"obj": object()}, "payload_unencodable"),
     ({"big": 1 << 70}, "payload_unencodable"),
     ("not a dict", "payload_type"), ([1, 2], "payload_type"),
     ({"blob": "x" * (1 << 20)}, "payload_too_large")],
)
def test_bad_payload_raises_and_writes_nothing(bound: Batcher, client, payload, code) -> None:
    with pytest.raises(PayloadError) as info:
        bound.emit_many("s", [{"k": "a", "ok": 1}, payload])
    assert info.value.code == code
    assert info.value.event == 1 and str(info.value).startswith("event 1: ")  # which one, by index
    assert _buffered(bound, client) == 0
    assert bound.open_buffers() == 0


def test_size_limit_is_configurable(make_batcher) -> None:
    b = make_batcher(max_payload_bytes=100)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1s"})
    b.emit("s", {"x": "y" * 50})
    with pytest.raises(PayloadError, match="above the limit of 100 bytes"):
        b.emit("s", {"x": "y" * 200})


def test_binary_and_unicode_payloads_round_trip(bound: Batcher) -> None:
    payload = {"k": "ключ", "bytes": b"\x00\xff", "nested": {"list": [1, None, 2.5]}, "n": -1}
    bound.emit("s", payload)
    (event,) = bound.drop("d@v1")
    assert event.payload == payload and event.source == "s"


def test_decode_responses_client_is_refused() -> None:
    import fakeredis

    from distbatch import ConfigError

    with pytest.raises(ConfigError, match="decode_responses"):
        Batcher(fakeredis.FakeRedis(decode_responses=True))


def test_subclasses_and_tuples_encode_as_their_plain_values(batcher: Batcher) -> None:
    """Strict msgpack types with a converting default: str/int enums keep their values, tuples
    become arrays, mapping subclasses become maps — and only such payloads pay the decode check."""
    import collections
    import enum

    class Color(enum.StrEnum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    batcher.register("e", version="v1", source="enc", handler="m.h", batch={"count": 1, "window": "1h"})
    payload = collections.OrderedDict(c=Color.RED, l=Level.HIGH, t=(1, 2), n={"x": 1.5})
    (r,) = batcher.emit("enc", payload)
    assert r.batch is not None
    assert r.batch.events[0].payload == {"c": "red", "l": 3, "t": [1, 2], "n": {"x": 1.5}}
    # the same in a plain dict, on the single emit's plain path (registry loaded): converted too
    (r,) = batcher.emit("enc", {"c": Color.RED, "l": Level.HIGH, "t": (1, 2)})
    assert r.batch is not None and r.batch.events[0].payload == {"c": "red", "l": 3, "t": [1, 2]}
    with pytest.raises(PayloadError, match=r"does not survive msgpack decoding .*; nothing was stored$"):
        batcher.emit("enc", {(1, 2): "a tuple key packs, and never unpacks"})
    assert batcher.open_buffers() == 0


@pytest.mark.parametrize("call", ["emit", "emit_many"])
def test_a_payload_over_the_limit_only_in_its_envelope_is_named(make_batcher, client, call: str) -> None:
    """A payload a few bytes under the limit on its own, over it with its id, source and time:
    the error once named no event (or, from the CLI, the wrong line), because the event was
    found again by encoding each payload in a shorter made-up envelope, where all of them fit."""
    import msgpack

    b = make_batcher(max_payload_bytes=300)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 100, "window": "1m"})
    big = {"k": "x" * 285}
    assert 290 <= len(msgpack.packb(big)) <= 295  # fits alone, and in an envelope of a 1-byte id at time 0
    with pytest.raises(PayloadError) as info:
        b.emit("s", big) if call == "emit" else b.emit_many("s", [{"k": "a"}, big, {"k": "b"}])
    index = 0 if call == "emit" else 1
    assert info.value.code == "payload_too_large" and info.value.event == index
    assert str(info.value).startswith(f"event {index}: ") and str(info.value).endswith("nothing was stored")
    assert "payload encodes" not in str(info.value)  # the payload alone is under the limit: say what is not
    assert "event encodes to" in str(info.value) and "envelope" in str(info.value)
    assert _buffered(b, client) == 0


def _nest(depth: int) -> list:
    x: list = []
    for _ in range(depth):
        x = [x]
    return x


@pytest.mark.parametrize("call", ["emit", "emit_many", "emit_many_mixed"])
def test_a_payload_nested_deeper_than_msgpack_unpacks_is_refused(bound: Batcher, client, call: str) -> None:
    """msgpack packs one level more than it unpacks: plain lists 1,022 deep were stored without
    the decode check (plain JSON types were taken to always decode), and the batch they joined
    went dead as undecodable, the good events beside them with it."""
    deep = {"k": "a", "deep": _nest(1022)}
    with pytest.raises(PayloadError) as info:
        if call == "emit":
            bound.emit("s", deep)
        elif call == "emit_many":
            bound.emit_many("s", [{"k": "a", "ok": 1}, deep])
        else:  # not every payload a plain dict: the loop's path
            bound.emit_many("s", [{"k": "a", "ok": 1}, deep, dict_subclass(k="a")])
    assert info.value.code == "payload_unencodable"  # msgpack 1.0 packs no deeper than 511 levels
    assert "decoding" in str(info.value) or "recursion limit" in str(info.value)
    assert _buffered(bound, client) == 0
    bound.emit("s", {"k": "a", "deep": _nest(500)})  # as deep as every msgpack takes: taken
    (event,) = bound.drop("d@v1")
    x, depth = event.payload["deep"], 0
    while x:
        x, depth = x[0], depth + 1
    assert depth == 500


class dict_subclass(dict):
    pass
