"""Another language's emitter that follows README "Emitting from another language (wire format)".

Each test sends, through `accumulate.lua` exactly as the README says, the bytes a Node emitter
(`@msgpack/msgpack` 3.x, `ioredis` 5) plausibly produces when it gets something wrong, and checks
that the script refuses it by name before writing anything, or that the batch it joins says what
is wrong instead of running as something else, and that the other producers' events still come
out. The last test drives a real Node emitter (`.ci/run` installs its packages).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import msgpack
import pytest
import redis

from distbatch import Batcher
from distbatch.codec import decode_events
from distbatch.scripts import source

from .redis_server import RedisServer

NAMES = ("regver", "call:{emitter}", "deadlines", "wake", "batchseq", "bindings",
         "ready", "stats", "rec:events", "rec:info", "rec:attempt")


class Foreign:
    """The README's step 4, one binding per call, one shard: what the Node emitter does."""

    def __init__(self, client: redis.Redis, namespace: str, emitter: str = "node-1") -> None:
        self.client, self.tag, self.emitter = client, "{" + namespace + "}", emitter
        self.sha = client.script_load(source("accumulate").encode())
        self.n = 0

    def call(self, binding: str, count: int, window_ms: int, member: str, events: list[bytes],
             call_id: str | None = None, prefix: str | None = None) -> Any:
        t = self.tag
        keys = [f"{t}:{k.format(emitter=self.emitter)}" for k in NAMES]
        keys += [f"{t}:open:{binding}", *[f"{t}:buf:{member}"] * len(events)]
        if call_id is None:
            self.n += 1
            call_id = f"node-call-{self.n}"
        bufp = f"{t}:buf:" if prefix is None else prefix
        regver = self.client.get(f"{t}:regver")
        args = [regver, call_id, "", 1024, "", bufp, 1, binding, count, window_ms, *events]
        return self.client.evalsha(self.sha, len(keys), *keys, *args)


def _setup(redis_server: RedisServer, namespace: str, count: int) -> tuple[redis.Redis, Batcher, Foreign]:
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, handoff=False)  # server clock, as the foreign calls
    b.register("d", version="v1", source="orders", handler="m.h", batch={"count": count, "window": "1h"})
    return client, b, Foreign(client, namespace)


def _claim(b: Batcher, batch_id: str) -> Any:
    claim = b.records.claim([batch_id], 10_000)
    assert claim is not None
    return claim


def test_a_truncated_foreign_event_silently_swallows_the_next_producers_event(redis_server: RedisServer,
                                                                             namespace: str) -> None:
    """Defect 1. README step 3: 'anything shorter, or not msgpack, makes the whole batch it joins
    undecodable: it goes dead'. An event whose bytes end early (a Buffer sliced short) is no
    error at all: `decode_events` reads on into the next event's bytes, so the Python event
    after it becomes a value inside the foreign payload and the batch runs with 2 events where
    3 were cut at count 3 (the stats still say 3 delivered)."""
    _client, b, f = _setup(redis_server, namespace, 3)
    b.emit("orders", {"i": 0})
    short = msgpack.packb(["node-1", "orders", 1700000000000, {"x": 1}])[:-1]  # its last byte lost
    f.call("d@v1", 3, 3_600_000, "d@v1|*", [short])
    (r,) = b.emit("orders", {"i": 2})
    assert r.batch is not None
    claim = _claim(b, r.batch.id)
    delivered = [] if claim.error else [e.payload for e in claim.batch.events]
    # what must hold: either the batch is refused by name, or every acknowledged event comes out
    assert claim.error is not None or {"i": 2} in delivered, (claim.error, delivered)


TWO_IN_ONE = msgpack.packb(["a", "orders", 1, {}]) + msgpack.packb(["b", "orders", 1, {}])


@pytest.mark.parametrize("item", [b"", TWO_IN_ONE], ids=["empty-item", "two-events-in-one-item"])
def test_a_batch_cut_at_count_holds_exactly_count_events(redis_server: RedisServer, namespace: str,
                                                         item: bytes) -> None:
    """Defect 2. The script takes any bytes as one event: an empty item (ioredis sends an empty
    Buffer as "") or two events in one item make a batch cut at count 2 hold 1 or 3 events."""
    _client, b, f = _setup(redis_server, namespace, 2)
    try:
        f.call("d@v1", 2, 3_600_000, "d@v1|*", [item])
    except redis.ResponseError as exc:  # refused, by name: fine
        assert "event" in str(exc)
        return
    (r,) = b.emit("orders", {"i": 1})
    assert r.batch is not None
    claim = _claim(b, r.batch.id)
    assert claim.error is not None or len(claim.batch.events) == 2, [e.id for e in claim.batch.events]


def test_an_event_sent_as_a_msgpack_map_is_not_delivered_as_its_key_names(redis_server: RedisServer,
                                                                          namespace: str) -> None:
    """Defect 3. `encode({id, source, emitted_at_ms, payload})` (a JS object, not the array)
    decodes as Event(id='id', source='source', payload='payload', emitted_at_ms=...): a tuple
    unpack of a 4-key dict yields its keys. The handler gets garbage, nothing says so."""
    client, b, f = _setup(redis_server, namespace, 2)
    as_map = msgpack.packb({"id": "node-1", "source": "orders", "emitted_at_ms": 1, "payload": {"i": 0}})
    with pytest.raises(redis.ResponseError, match=r"item 1: its event is no msgpack array .*first byte 0x84"):
        f.call("d@v1", 2, 3_600_000, "d@v1|*", [as_map])
    assert client.llen(b.keys.buffer("d@v1", None)) == 0
    # the same map after a well-formed event of the call (the script looks at a route's first):
    # the record does not decode, by name, instead of running with the map's keys as its fields
    f.call("d@v1", 2, 3_600_000, "d@v1|*", [msgpack.packb(["n", "orders", 1, {}]), as_map])
    (bid,) = [x.decode() for x in client.zrange(b.keys.ready, 0, -1)]
    claim = _claim(b, bid)
    assert claim.error is not None and "msgpack dict" in claim.error, claim.error


def test_a_node_string_with_a_lone_surrogate_does_not_take_other_producers_events_dead(
        redis_server: RedisServer, namespace: str) -> None:
    """Defect 4. @msgpack/msgpack writes a JS string holding a lone surrogate ('abc\\ud83d', an
    emoji cut in half by .slice) as WTF-8 bytes ED A0 BD. The script stores it; the worker's
    `raw=False` decode fails for the whole batch, so the Python events acknowledged with it
    never reach a handler (replay fails the same way)."""
    _client, b, f = _setup(redis_server, namespace, 3)
    b.emit("orders", {"i": 0})
    wtf8 = bytes.fromhex("94") + msgpack.packb("node-1") + msgpack.packb("orders") + msgpack.packb(1) \
        + bytes.fromhex("81a474657874a6616263eda0bd")  # {"text": "abc" + lone high surrogate}
    f.call("d@v1", 3, 3_600_000, "d@v1|*", [wtf8])
    (r,) = b.emit("orders", {"i": 2})
    assert r.batch is not None
    claim = _claim(b, r.batch.id)
    assert claim.error is None, claim.error
    assert [e.payload.get("i") for e in claim.batch.events if "i" in e.payload] == [0, 2]


def test_a_lost_reply_resent_after_another_call_of_the_same_emitter_is_not_stored_twice(
        redis_server: RedisServer, namespace: str) -> None:
    """Defect 5. README: `<emitter>` is 'any id unique to your process/thread'. A Node process
    runs many calls at once on one connection: call A's reply is lost, call B (same emitter id)
    runs, A is resent: the call key remembers only B, so A runs again and its event is stored
    twice (SPEC 3: a lost reply or a client-side retry never stores an event twice)."""
    client, b, f = _setup(redis_server, namespace, 10)
    ev_a = msgpack.packb(["node-A", "orders", 1, {"i": "A"}])
    ev_b = msgpack.packb(["node-B", "orders", 1, {"i": "B"}])
    f.call("d@v1", 10, 3_600_000, "d@v1|*", [ev_a], call_id="1")   # its reply lost
    f.call("d@v1", 10, 3_600_000, "d@v1|*", [ev_b], call_id="2")   # another async task's call
    older = r"call_id=1 is older than the last call of its emitter \(2\)"
    with pytest.raises(redis.ResponseError, match=older):
        f.call("d@v1", 10, 3_600_000, "d@v1|*", [ev_a], call_id="1")   # the resend of A
    stored = client.lrange(b.keys.buffer("d@v1", None), 0, -1)
    assert stored == [ev_a, ev_b]
    # the emitter's next call goes on as before; the resend left the call key as it was
    f.call("d@v1", 10, 3_600_000, "d@v1|*", [ev_b], call_id="3")
    assert f.call("d@v1", 10, 3_600_000, "d@v1|*", [ev_b], call_id="3") == [-2]


@pytest.mark.parametrize("pos,value,field", [(8, "abc", "count"), (9, "1h", "window"), (3, "", "cap")])
def test_an_argument_the_script_cannot_read_is_refused_by_name_before_anything_is_written(
        redis_server: RedisServer, namespace: str, pos: int, value: str, field: str) -> None:
    """Defect 6. `count="abc"` (a JS client that sent the config's text, or undefined) answers
    'attempt to compare nil with number' after the event was pushed and the call id taken: the
    error names neither field nor value, and the event stays stored."""
    client, b, f = _setup(redis_server, namespace, 2)
    t = f.tag
    keys = [f"{t}:{k.format(emitter='node-1')}" for k in NAMES] + [f"{t}:open:d@v1", f"{t}:buf:d@v1|*"]
    args: list[Any] = [client.get(f"{t}:regver"), "c-1", "", 1024, "", f"{t}:buf:", 1, "d@v1", 2, 3_600_000,
                       msgpack.packb(["n", "orders", 1, {}])]
    args[pos] = value
    with pytest.raises(redis.ResponseError) as err:
        client.evalsha(f.sha, len(keys), *keys, *args)
    msg = str(err.value)
    assert field in msg and (repr(value) in msg or f'"{value}"' in msg), msg
    assert client.llen(b.keys.buffer("d@v1", None)) == 0


def test_a_buffer_prefix_that_does_not_match_the_buffer_key_is_refused(redis_server: RedisServer,
                                                                       namespace: str) -> None:
    """Defect 7. ARGV's buffer prefix "T:buf:" passed without the tag ("buf:") is taken: the
    member the script files in deadlines/open is the key less len("buf:") bytes
    (':buf:d@v1|*' here), so no sweeper ever cuts the real buffer and drop() never finds it: the
    acknowledged event sits in Redis for ever (`stats --events` only counts it unaccounted)."""
    client, _b, f = _setup(redis_server, namespace, 2)
    try:
        f.call("d@v1", 2, 3_600_000, "d@v1|*", [msgpack.packb(["n", "orders", 1, {}])], prefix="buf:")
    except redis.ResponseError as exc:
        assert "buf:" in str(exc)
        return
    members = [m.decode() for m in client.zrange(f"{f.tag}:deadlines", 0, -1)]
    assert members == ["d@v1|*"], members


def test_buffer_keys_and_prefix_agreeing_without_the_tag_are_refused(redis_server: RedisServer,
                                                                     namespace: str) -> None:
    """A prefix and buffer keys that agree with each other but not with the namespace's keys (the
    tag left out of both): the member is right, but a sweeper or `drop` looks for the buffer
    under the tag, and the events would sit in Redis for ever."""
    client, _b, f = _setup(redis_server, namespace, 2)
    t = f.tag
    keys = [f"{t}:{k.format(emitter='node-1')}" for k in NAMES] + [f"{t}:open:d@v1", "buf:d@v1|*"]
    args = [client.get(f"{t}:regver"), "1", "", 1024, "", "buf:", 1, "d@v1", 2, 3_600_000,
            msgpack.packb(["n", "orders", 1, {}])]
    with pytest.raises(redis.ResponseError, match=r"prefix=\"buf:\" is not the tag of the deadlines"):
        client.evalsha(f.sha, len(keys), *keys, *args)
    assert client.llen("buf:d@v1|*") == 0 and client.zcard(f"{t}:deadlines") == 0


def test_decode_events_refuses_a_record_ending_inside_an_event() -> None:
    """codec.decode_events checks `unpacker.tell() != len(blob)` after `list(unpacker)`; but
    msgpack's tell() after a failed partial read counts the partial bytes, so the check never
    fires and the event cut short is dropped in silence (drop(), LazyEvents, notes)."""
    good = msgpack.packb(["a", "s", 1, {"i": 0}])
    short = msgpack.packb(["node-1", "orders", 1700000000000, {"x": 1}])[:-1]
    with pytest.raises(ValueError, match="ends inside an event"):
        decode_events(good + short)


def test_drop_returns_what_decodes_and_names_a_buffer_that_does_not(redis_server: RedisServer, namespace: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A buffer holding an event cut short: its events were returned short of one, in silence
    (the next event hid in its payload: 2 returned, 3 counted dropped); a raise half-way would
    lose what the drop drained before. The drain's count per buffer tells."""
    client, b, f = _setup(redis_server, namespace, 10)
    b.register("k", version="v1", source="orders", handler="m.h",
               batch={"count": 10, "window": "1h", "key": "p"})
    b.emit("orders", {"i": 0})
    short = msgpack.packb(["node-1", "orders", 1700000000000, {"x": 1}])[:-1]
    f.call("d@v1", 10, 3_600_000, "d@v1|*", [short])
    b.emit("orders", {"i": 1, "p": "x"})
    with caplog.at_level("WARNING", logger="distbatch"):
        assert b.drop("d@v1") == []
        assert sorted(e.payload["i"] for e in b.drop("k@v1")) == [0, 1]  # another binding's buffers
    # the event after the one cut short hid in its payload: the drain's count of 3 says so
    assert "drop_undecodable binding=d@v1 buffer=d@v1|*" in caplog.text and "3 events" in caplog.text
    assert int(client.hget(b.keys.stats, "events_dropped:d@v1") or 0) == 3  # counted as dropped


def test_a_hex_call_id_is_not_taken_for_a_number(redis_server: RedisServer, namespace: str) -> None:
    """call_once.lua reads a call id as a number with Lua's tonumber, which takes '12e45678'
    (random hex) as 1.2e45679 = inf, and also '0x1f', ' 5', 'inf': a random-hex emitter's next
    all-digit id is then refused as 'older than the last call (inf)'."""
    client, b, f = _setup(redis_server, namespace, 10)
    ev = msgpack.packb(["n", "orders", 1, {}])
    f.call("d@v1", 10, 3_600_000, "d@v1|*", [ev], call_id="12e45678")
    f.call("d@v1", 10, 3_600_000, "d@v1|*", [ev], call_id="31415926")  # HEAD: ResponseError
    assert client.llen(b.keys.buffer("d@v1", None)) == 2


NODE_EMIT = r"""
const Redis = require('ioredis');
const { encode } = require('@msgpack/msgpack');
(async () => {
  const [url, tag, sha, regver] = process.argv.slice(2);
  const r = new Redis(url);
  const keys = ['regver', 'call:node-1', 'deadlines', 'wake', 'batchseq', 'bindings', 'ready', 'stats',
                'rec:events', 'rec:info', 'rec:attempt', 'open:d@v1', 'buf:d@v1|*'].map(k => `${tag}:${k}`);
  // what the README's step 3 leads to: encode() gives a Uint8Array, passed on as it is
  const event = encode(['node-1', 'orders', Date.now(), { i: 'node' }]);
  const reply = await r.evalsha(sha, keys.length, ...keys, regver, 'node-call-1', '', '1024', '',
                                `${tag}:buf:`, '1', 'd@v1', '3', '3600000', event);
  console.log(JSON.stringify(reply));
  await r.quit();
})().catch(e => { console.error(String(e)); process.exit(1); });
"""


def _node_modules() -> str | None:
    """Where `.ci/run` installed ioredis and @msgpack/msgpack (DISTBATCH_TEST_NODE_MODULES)."""
    d = os.environ.get("DISTBATCH_TEST_NODE_MODULES")
    if d:
        assert os.path.isdir(os.path.join(d, "ioredis")), f"DISTBATCH_TEST_NODE_MODULES={d} has no ioredis"
    return d


def test_an_events_bytes_sent_as_text_are_refused(redis_server: RedisServer, namespace: str) -> None:
    """Defect 8 without Node: ioredis sends a Uint8Array (what `encode` returns) as String(x),
    '148,164,...'; the script stored that text as the event and the batch it joined (the Python
    events too) went dead at the worker."""
    _client, b, f = _setup(redis_server, namespace, 3)
    b.emit("orders", {"i": 0})
    as_text = ",".join(map(str, msgpack.packb(["node-1", "orders", 1, {"i": "node"}]))).encode()
    with pytest.raises(redis.ResponseError, match=r"item 1: its event is no msgpack array .*first byte 0x31"):
        f.call("d@v1", 3, 3_600_000, "d@v1|*", [as_text])
    b.emit("orders", {"i": 1})
    (r,) = b.emit("orders", {"i": 2})
    assert r.batch is not None
    claim = _claim(b, r.batch.id)
    assert claim.error is None and [e.payload for e in claim.batch.events] == [{"i": 0}, {"i": 1}, {"i": 2}]


@pytest.mark.skipif(not shutil.which("node") or not _node_modules(),
                    reason="node, and ioredis + @msgpack/msgpack in DISTBATCH_TEST_NODE_MODULES (.ci/run)")
def test_a_node_emitters_uint8array_is_refused_not_stored_as_text(redis_server: RedisServer, namespace: str,
                                                                  tmp_path: Any) -> None:
    """Defect 8. @msgpack/msgpack's `encode` returns a Uint8Array; ioredis sends anything but a
    Buffer as String(x): '148,164,...'. The script stores that text as the event, and the batch
    it joins (the Python events too) goes dead at the worker. A script that looked at the first
    byte (a msgpack array: 0x94-0x9f, 0xdc, 0xdd) would refuse it at emit, naming the item."""
    client, b, f = _setup(redis_server, namespace, 3)
    b.emit("orders", {"i": 0})
    script = tmp_path / "emit.js"
    script.write_text(NODE_EMIT)
    env = {**os.environ, "NODE_PATH": _node_modules() or ""}
    regver = client.get(f"{f.tag}:regver").decode()
    out = subprocess.run(["node", str(script), redis_server.url, f.tag, f.sha, regver],
                         capture_output=True, text=True, env=env, timeout=30)
    if out.returncode != 0:  # refused by the script: what should happen
        assert "event" in out.stderr, out.stderr
        return
    json.loads(out.stdout)
    (r,) = b.emit("orders", {"i": 2})
    assert r.batch is not None
    claim = _claim(b, r.batch.id)
    assert claim.error is None, claim.error


@pytest.mark.parametrize("pos,value,said", [
    (1, "", 'cap=""'), (5, "abc", 'count="abc"'), (6, "1h", 'window_ms="1h"'),
    (7, "soon", 'window_now="soon"'), (9, b'\x84\xa2id', "first byte 0x84"),
    (9, b"", "it is empty"), (3, "buf:", 'buffer key prefix="buf:" is not the tag'),
])
def test_accumulate_one_refuses_an_argument_by_name_before_writing(redis_server: RedisServer, namespace: str,
                                                                    pos: int, value: Any, said: str) -> None:
    """The single-event script (README step 4's `accumulate_one`) checks what `accumulate` does."""
    client, b, f = _setup(redis_server, namespace, 2)
    t = f.tag
    sha = client.script_load(source("accumulate_one").encode())
    keys = [f"{t}:{k.format(emitter='node-1')}" for k in NAMES] + [f"{t}:open:d@v1", f"{t}:buf:d@v1|*"]
    good: list[Any] = [client.get(f"{t}:regver"), 1024, "", f"{t}:buf:", "d@v1", 2, 3_600_000, "", "7",
                       msgpack.packb(["n", "orders", 1, {}])]
    args = list(good)
    args[pos] = value
    with pytest.raises(redis.ResponseError, match="nothing was written") as err:
        client.evalsha(sha, len(keys), *keys, *args)
    assert said in str(err.value), str(err.value)
    assert client.llen(b.keys.buffer("d@v1", None)) == 0 and client.get(f"{t}:call:node-1") is None
    assert client.evalsha(sha, len(keys), *keys, *good)[0] > 0  # the same call, put right, stores it
    assert client.llen(b.keys.buffer("d@v1", None)) == 1
