"""Hostile partition keys: no collisions, no cross-slot keys, nothing corrupts another buffer."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from distbatch import Batcher, ManualClock
from distbatch.keys import Keys, decode_partition, encode_partition, member
from distbatch.shards import Layout, shard_of, tags_for

HOSTILE = ["{", "}", "{x}", ":", "a:b", "*", "=", "|", "%", "%2A", "=*", "", " ", "null",
           "\x00\x01", "\udcff"[:0] + "ü", "😀", "a|b=c", "{distbatch}", "}{", "x" * 100_000,
           "\\", "\n", "buf:x"]


def test_encoding_is_injective_and_reversible() -> None:
    segs = [encode_partition(k) for k in [*HOSTILE, None]]
    assert len(set(segs)) == len(segs)
    for k in [*HOSTILE, None]:
        assert decode_partition(encode_partition(k)) == k
    for seg in segs[:-1]:
        assert not set(seg) & set("{}:|*")


@given(st.lists(st.one_of(st.none(), st.text()), unique=True, max_size=20))
def test_encoding_injective_property(values: list[str | None]) -> None:
    segs = {encode_partition(v) for v in values}
    assert len(segs) == len(values)


@given(st.one_of(st.text(), st.text(alphabet="AZaz09_.~-%é{")))
def test_unreserved_fast_path_encodes_as_quote_does(value: str) -> None:
    assert encode_partition(value) == "=" + quote(value, safe="", errors="surrogatepass")


@given(st.text(), st.text())
@settings(max_examples=200)
def test_every_key_of_a_shard_shares_one_slot(a: str, b: str) -> None:
    for k in (Keys("ns"), *Layout("ns", tuple(tags_for("ns", 3))).keys):
        slot = key_slot(k.deadlines.encode())
        for name in (k.buffer("x@v1", a), k.buffer("y@v2", b), k.open_buffers("x@v1"), k.call("e"),
                     *k.lifecycle, k.bindings, k.registry_version, k.lease, k.wake, k.done("t")):
            assert key_slot(name.encode("utf-8", "surrogatepass")) == slot


def test_hostile_keys_get_their_own_buffers(batcher: Batcher, clock: ManualClock, client) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h",
                     batch={"count": 3, "window": "1m", "key": "k"})
    for i, k in enumerate(HOSTILE):
        batcher.emit("s", {"k": k, "i": i})
    slots = {key_slot(name) for name in client.keys(batcher.keys.base + "*")}
    assert len(slots) == 1
    clock.advance("1m")
    flushed = batcher.flush_expired()
    assert sorted((b.partition_key, [e.payload["i"] for e in b.events]) for b in flushed) == sorted(
        (k, [i]) for i, k in enumerate(HOSTILE))


def test_hostile_key_value_cannot_reach_another_namespace(make_batcher) -> None:
    a = make_batcher(namespace="victim")
    b = make_batcher(namespace="attacker")
    a.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1m"})
    b.register("d", version="v1", source="s", handler="m.h",
               batch={"count": 2, "window": "1m", "key": "k"})
    b.emit("s", {"k": "}:buf:d@v1|*"})
    b.emit("s", {"k": "{victim}:buf:d@v1|*"})
    r = a.emit("s", {})
    assert r[0].batch is None
    a.drop("d@v1")
    b.drop("d@v1")


def test_member_cache_is_bounded_and_agrees_with_keys() -> None:
    from distbatch import keys

    for i in range(keys.MEMBER_CACHE_SIZE + 10):
        pk = None if i == 7 else f"{{k}}:{i}"
        assert keys.member_bytes("b@v1", pk) == member("b@v1", pk).encode()
        assert len(keys._members["b@v1"]) <= keys.MEMBER_CACHE_SIZE
    for pk in ("plain-key_1.x~", "ünï", "a b", "", None):  # the fast and the quoting path
        assert keys.member_bytes("c@v1", pk) == member("c@v1", pk).encode("utf-8", "surrogatepass")


def test_member_caches_are_kept_for_the_latest_bindings_only() -> None:
    """A member cache per binding ever emitted to stayed for the process's life (every version a
    long-running producer or `serve` saw: up to ~40 MB each). The least recently used go past
    `MEMBER_CACHE_BINDINGS`; one in use stays, and members still agree with `member`."""
    from distbatch import keys

    keys.members_cache("kept@v1")["x"] = b"kept@v1|=x"
    for i in range(keys.MEMBER_CACHE_BINDINGS * 3):
        assert keys.member_bytes(f"gone{i}@v1", f"k{i}") == member(f"gone{i}@v1", f"k{i}").encode()
        keys.members_cache("kept@v1")  # used all along
    assert len(keys._members) <= keys.MEMBER_CACHE_BINDINGS
    assert "kept@v1" in keys._members and "gone0@v1" not in keys._members


def test_many_bindings_share_what_their_member_caches_hold() -> None:
    """64 bindings' caches of 65,536 keys each held 2.6 GB (the second diff review's run, keys of
    256 characters). A binding's cache now takes keys up to its share of `MEMBER_CACHE_TOTAL`
    (at least 4,096); a few bindings keep a whole `MEMBER_CACHE_SIZE` each."""
    from distbatch import keys

    keys._members.clear()
    keys.member_bytes("one@v1", "k")
    assert keys.member_cap() == keys.MEMBER_CACHE_SIZE
    for i in range(40):
        keys.member_bytes(f"many{i}@v1", "k")
    cap = keys.member_cap()
    assert cap == max(4096, keys.MEMBER_CACHE_TOTAL // len(keys._members)) < keys.MEMBER_CACHE_SIZE
    for n in range(cap + 500):
        assert keys.member_bytes("many39@v1", f"p{n}") == member("many39@v1", f"p{n}").encode()
    assert len(keys._members["many39@v1"]) == cap


def test_emit_with_a_full_member_cache_builds_the_same_buffers(make_batcher, monkeypatch) -> None:
    """More live keys than the cache holds: the emit path stops looking in it and builds each
    member; every event still lands in the buffer `Keys.buffer` names, hostile keys included."""
    from distbatch import ingest, keys

    monkeypatch.setattr(keys, "MEMBER_CACHE_SIZE", 3)
    monkeypatch.setattr(ingest, "member_cap", lambda: 3)
    b = make_batcher()
    b.register("fc", version="v1", source="s", handler="m.h",
               batch={"count": 1000, "window": "1h", "key": "k"})
    pks = ["a1", "b2", "c3", "d4", "plain-key_1.x", *HOSTILE[:12]]
    for _ in range(2):  # the second time round the cache is full
        b.emit_many("s", [{"k": pk} for pk in pks] + [{"no": "key"}])
    assert len(keys.members_cache("fc@v1")) <= 3
    for pk in [*pks, None]:
        shard = b.shards[shard_of(member("fc@v1", pk).encode("utf-8", "surrogatepass"), len(b.shards))]
        assert b.client.llen(shard.buffer("fc@v1", pk)) == 2, pk
