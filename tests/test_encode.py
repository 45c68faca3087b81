"""emit_many's encoding and planning in C (`codec.encode_events`, `Ingest._keys_of`): the same
bytes, ids and partition keys as the per-event loop they short-cut, and the loop's error names
wherever the short cut cannot go."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest

from distbatch import Batcher, PayloadError
from distbatch.codec import encode_events

PAYLOADS: list[dict[str, Any]] = [
    {"k": "a", "n": 1}, {"k": "ключ", "nested": {"list": [1, None, 2.5]}, "b": b"\x00\xff"},
    {}, {"x": "%s %d %%"}, {"big": "y" * 300},
]


@pytest.mark.parametrize("source", ["src", "a%sb%%c%012x", "ü" * 40, "s" * 300])
@pytest.mark.parametrize("stamp", [0, 1_700_000_000_000, (1 << 63) - 1])
def test_each_event_is_its_envelope_packed_whole(source: str, stamp: int) -> None:
    ids = itertools.count(7)
    events = encode_events(ids, "0123456789ab", source, stamp, PAYLOADS, 1 << 20)
    assert len(events) == len(PAYLOADS)
    for n, (data, payload) in enumerate(zip(events, PAYLOADS, strict=True), 7):
        event_id = f"0123456789ab-{n:x}"  # 7..b: one digit each, none padded
        assert data == msgpack.packb([event_id, source, stamp, payload], use_bin_type=True)
    assert next(ids) == 7 + len(PAYLOADS)  # one number per event, none skipped


def test_ids_of_a_call_are_padded_to_its_widest_and_stay_unique() -> None:
    """0xffe..0x1002: the call's ids all pack to one length, and none equals an id of the same
    counter unpadded (a single emit's)."""
    events = encode_events(itertools.count(0xFFE), "p", "s", 1, PAYLOADS, 1 << 20)
    ids = [msgpack.unpackb(e)[0] for e in events]
    assert ids == ["p-0ffe", "p-0fff", "p-1000", "p-1001", "p-1002"]
    singles = {f"p-{n:x}" for n in range(0x1003)}  # every unpadded id the counter could give
    assert not singles & set(ids[:2])  # the padded two: no unpadded id of any number is theirs
    many = encode_events(itertools.count(0), "p", "s", 1, [{}] * 300, 1 << 20)
    assert len({msgpack.unpackb(e)[0] for e in many}) == 300


@pytest.mark.parametrize("start", [0, 7, 0x10, 0xFFE, 0x1000, 0xABCDE])
def test_a_call_of_plain_dicts_formats_its_ids_in_c_not_one_by_one(monkeypatch: pytest.MonkeyPatch,
                                                                     start: int) -> None:
    """The short cut builds one envelope template per call, whether its ids share a width (`%x`)
    or cross one (padded): a template that fails to format would fall back, silently, to the
    per-event loop, which names each id in Python. Both give the same bytes."""
    from distbatch import codec

    named: list[int] = []
    real = codec.event_id
    monkeypatch.setattr(codec, "event_id", lambda p, n, w=0: named.append(n) or real(p, n, w))
    payloads = [{"k": str(i)} for i in range(40)]
    events = encode_events(itertools.count(start), "p", "s%x", 1, payloads, 1 << 20)
    assert len(named) == 1  # the template's; none per event
    width = len(f"{start + 39:x}")
    assert events == [msgpack.packb([f"p-{n:0{width}x}", "s%x", 1, p], use_bin_type=True)
                      for n, p in zip(range(start, start + 40), payloads, strict=True)]


@pytest.mark.parametrize(("bad", "code"), [({"when": object()}, "payload_unencodable"),
                                           ({"blob": "x" * 2000}, "payload_too_large"),
                                           ("not a dict", "payload_type")])
def test_a_bad_payload_among_many_is_named_by_its_number(make_batcher, bad: Any, code: str) -> None:
    b = make_batcher(max_payload_bytes=1000)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 100, "window": "1m", "key": "k"})
    payloads: list[Any] = [{"k": str(i)} for i in range(6)]
    payloads[4] = bad
    with pytest.raises(PayloadError) as info:
        b.emit_many("s", payloads)
    assert (info.value.code, info.value.event) == (code, 4)
    assert b.open_buffers() == 0


def test_partition_keys_of_many_are_those_of_one_by_one(batcher: Batcher) -> None:
    """Strings, numbers, a missing key, None, keys that need escaping: emit_many's C short cut
    takes only all-string keys it has seen, and both paths agree on every kind."""
    batcher.register("d", version="v1", source="s", handler="m.h",
                     batch={"count": 100, "window": "1m", "key": "k"})
    kinds: list[dict[str, Any]] = [{"k": "a"}, {"k": 5}, {}, {"k": None}, {"k": "a b|c"}, {"k": "ü"},
                                   {"k": True}, {"k": 2.5}]
    one_by_one = [batcher.emit("s", p)[0].partition_key for p in kinds]
    for payloads in (kinds, [p for p in kinds if isinstance(p.get("k"), str)], kinds[::-1]):
        many = [r.partition_key for r in batcher.emit_many("s", payloads)]
        assert many == [batcher.emit("s", p)[0].partition_key for p in payloads]
    assert one_by_one[0] == "a" and one_by_one[2] is None
    dropped = [e.payload for e in batcher.drop("d@v1")]
    assert dropped.count({"k": "a"}) == 7  # 1 + 3 lists x (many + one by one): all in one buffer
