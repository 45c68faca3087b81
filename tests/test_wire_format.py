"""Emit the way a service in another language would, from the README's wire format alone."""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any
from urllib.parse import quote

import msgpack
import pytest
import redis

from distbatch import Batcher, ManualClock
from distbatch.scripts import source

from .redis_server import RedisServer


def test_foreign_emitter_following_the_documented_format(client, namespace: str) -> None:
    b = Batcher(client, namespace=namespace, clock=ManualClock(0), handoff=False)
    b.register("d", version="v1", source="orders", handler="m.h",
               batch={"count": 2, "window": "1m", "key": "shop"})
    member = "d@v1|=" + quote("Ünï {shop}:1", safe="")
    meta = client.hget("{" + namespace + "}:meta", "tags")  # absent: one shard, tag {ns}
    tags = json.loads(meta) if meta else ["{" + namespace + "}"]
    ns = tags[zlib.crc32(member.encode()) % len(tags) if len(tags) > 1 else 0]  # the member's shard
    version = client.get(f"{ns}:regver")
    (definition,) = [json.loads(v) for v in client.hgetall(f"{ns}:bindings").values()]
    lua = source("accumulate").encode()
    sha = hashlib.sha1(lua).hexdigest()
    client.script_load(lua)
    names = ("regver", "call:go-app-1", "deadlines", "wake", "batchseq", "bindings",
             "ready", "stats", "rec:events", "rec:info", "rec:attempt", "open:d@v1", f"buf:{member}")
    keys = [f"{ns}:{k}" for k in names]
    route = ["d@v1", definition["batch"]["count"], definition["batch"]["window_ms"]]
    replies = []
    for i in range(2):
        prefix = "" if len(tags) == 1 else f"{tags.index(ns)}."  # batch ids name their shard
        head = [version, f"call-{i}", "", 1024, prefix, f"{ns}:buf:", 1, *route]
        event = msgpack.packb([f"go-{i}", "orders", 1700000000000 + i, {"shop": "Ünï {shop}:1", "i": i}])
        args = [*head, event]
        replies.append(client.evalsha(sha, len(keys), *keys, *args))
    assert replies[0][1:] == []  # nothing to report for the first event
    _, item, kind, batch_id, _ = replies[1]
    assert (item, kind) == (1, b"count")
    batch = b.records.get_batch(batch_id.decode())
    assert batch.partition_key == "Ünï {shop}:1" and [e.payload["i"] for e in batch.events] == [0, 1]
    assert batch.events[0].id == "go-0" and batch.events[1].emitted_at_ms == 1700000000001
    again = client.evalsha(sha, len(keys), *keys, *args)  # a retry of the same call id: not re-run,
    assert again == [-2, *replies[1]] and client.llen(f"{ns}:buf:{member}") == 0  # says what it did
    stale = client.evalsha(sha, len(keys), *keys, b"999", "call-9", *head[2:])
    assert stale[0] == -1


def test_foreign_emitter_may_pass_the_ticket_queue_and_learn_its_length(redis_server: Any,
                                                                       namespace: str) -> None:
    """The optional last key: the reply then ends with the queue's length when the call cut a
    batch, else -1; the rest of the reply is as without it."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, clock=ManualClock(0), handoff=False)
    b.register("d", version="v1", source="orders", handler="m.h", batch={"count": 2, "window": "1m"})
    ns = "{" + namespace + "}"
    queue = f"rq:queue:distbatch-{namespace}"
    client.rpush(queue, "a-ticket")
    lua = source("accumulate").encode()
    sha = client.script_load(lua)
    names = ("regver", "call:go-app-2", "deadlines", "wake", "batchseq", "bindings",
             "ready", "stats", "rec:events", "rec:info", "rec:attempt", "open:d@v1", "buf:d@v1|*")
    keys = [*(f"{ns}:{k}" for k in names), queue]
    replies = []
    for i in range(2):
        event = msgpack.packb([f"go-{i}", "orders", 1700000000000 + i, {"i": i}])
        args = [client.get(f"{ns}:regver"), f"c-{i}", "", 1024, "", f"{ns}:buf:", 1, "d@v1", 2, 60000,
                event]
        replies.append(client.evalsha(sha, len(keys), *keys, *args))
    assert replies[0][1:] == [-1]  # nothing cut: -1 ends the reply
    assert replies[1][1:3] == [1, b"count"] and replies[1][-1] == 1  # one ticket waits
    assert len(replies[1]) == 1 + 4 + 1


@pytest.mark.parametrize("script", ["accumulate", "accumulate_one"])
def test_foreign_emitter_may_pass_the_bell_after_the_queue_and_it_is_rung_per_cut(
    redis_server: Any, namespace: str, script: str
) -> None:
    """After the queue key, the workers' bell: each call that makes a batch ready pushes a token
    (at most 8 are kept), so a worker lingering for batches wakes at once; others push none."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, clock=ManualClock(0), handoff=False)
    b.register("d", version="v1", source="orders", handler="m.h", batch={"count": 2, "window": "1m"})
    ns = "{" + namespace + "}"
    queue, bell = f"rq:queue:distbatch-{namespace}", f"{ns}:bell"
    sha = client.script_load(source(script).encode())
    names = ("regver", "call:go-app-4", "deadlines", "wake", "batchseq", "bindings",
             "ready", "stats", "rec:events", "rec:info", "rec:attempt", "open:d@v1")
    head = [f"{ns}:{k}" for k in names]
    lengths = []
    for i in range(20):
        event = msgpack.packb([f"go-{i}", "orders", 1700000000000 + i, {"i": i}])
        version = client.get(f"{ns}:regver")
        if script == "accumulate":
            keys = [*head, f"{ns}:buf:d@v1|*", queue, bell]
            args = [version, f"c-{i}", "", 1024, "", f"{ns}:buf:", 1, "d@v1", 2, 60000, event]
        else:
            keys = [*head, queue, bell, f"{ns}:buf:d@v1|*"]
            args = [version, 1024, "", f"{ns}:buf:", "d@v1", 2, 60000, "", f"c-{i}", event]
        reply = client.evalsha(sha, len(keys), *keys, *args)
        assert reply[-1] == (0 if i % 2 else -1)  # the queue's length when it cut, as without the bell
        lengths.append(client.llen(bell))
    assert lengths == [min(8, (i + 1) // 2) for i in range(20)]


def test_foreign_emitter_may_send_one_event_through_accumulate_one(client, namespace: str) -> None:
    """The README's single-event script, from its text alone: same steps and reply as accumulate
    with one item (item number 1), and a resend of a call id is not run again but says what the
    call did."""
    b = Batcher(client, namespace=namespace, clock=ManualClock(0), handoff=False, shards=1)
    b.register("d", version="v1", source="orders", handler="m.h", batch={"count": 2, "window": "1m"})
    ns = "{" + namespace + "}"
    lua = source("accumulate_one").encode()
    sha = hashlib.sha1(lua).hexdigest()
    client.script_load(lua)
    names = ("regver", "call:go-app-3", "deadlines", "wake", "batchseq", "bindings",
             "ready", "stats", "rec:events", "rec:info", "rec:attempt", "open:d@v1", "buf:d@v1|*")
    keys = [f"{ns}:{k}" for k in names]
    replies = []
    for i in range(2):
        event = msgpack.packb([f"go-{i}", "orders", 1700000000000 + i, {"i": i}])
        args = [client.get(f"{ns}:regver"), 1024, "", f"{ns}:buf:", "d@v1", 2, 60000, "", f"c-{i}", event]
        replies.append(client.evalsha(sha, len(keys), *keys, *args))
    assert replies[0][1:] == []
    _, item, kind, batch_id, _ = replies[1]
    assert (item, kind) == (1, b"count")
    batch = b.records.get_batch(batch_id.decode())
    assert [e.payload["i"] for e in batch.events] == [0, 1] and batch.events[0].id == "go-0"
    assert client.evalsha(sha, len(keys), *keys, *args) == [-2, *replies[1]]


def test_an_include_inside_a_function_is_never_taken_as_the_top_levels_copy(redis_server: Any) -> None:
    """`-- @include` expansion: once per script at the top level; an indented one (inside a
    function, as accumulate_one's rarer steps are) is expanded where it stands, again in a second
    function, and a later top-level include of the same file is not skipped because of it."""
    from distbatch.scripts import expand

    includes = {"helper": "local function helper() return 'h' end\n-- @include base\n",
                "base": "local base = 'b'\n"}
    script = """local function first()
  -- @include helper
  return helper() .. base
end
local function second()
  -- @include helper
  return helper()
end
-- @include helper
-- @include base
return {first(), second(), helper(), base}
"""
    lua = expand(script, includes.__getitem__)
    assert lua.count("local function helper()") == 3 and lua.count("local base = 'b'") == 3
    client = redis.Redis.from_url(redis_server.url)
    assert client.eval(lua, 0) == [b"hb", b"h", b"h", b"b"]
    top_first = expand("-- @include base\nlocal function f()\n  -- @include base\n  return base\nend\n"
                       "return f()", includes.__getitem__)
    assert top_first.count("local base") == 1 and client.eval(top_first, 0) == b"b"


def test_a_foreign_call_id_holding_a_bar_is_refused_by_name(redis_server: Any, namespace: str) -> None:
    """What a call reported is kept after its id and a '|' in the call key, so a call id with a
    '|' would be ambiguous (`job7` after `job7|a` would read as its resend): it is refused,
    naming the field and the value, and nothing is stored; the calls around it are not affected."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, clock=ManualClock(0), handoff=False)
    b.register("d", version="v1", source="orders", handler="m.h", batch={"count": 10, "window": "1m"})
    ns = "{" + namespace + "}"
    sha = client.script_load(source("accumulate").encode())
    names = ("regver", "call:go-app-5", "deadlines", "wake", "batchseq", "bindings",
             "ready", "stats", "rec:events", "rec:info", "rec:attempt", "open:d@v1", "buf:d@v1|*")
    keys = [f"{ns}:{k}" for k in names]

    def call(i: int, call_id: str) -> Any:
        event = msgpack.packb([f"go-{i}", "orders", 1700000000000 + i, {"i": i}])
        args = [client.get(f"{ns}:regver"), call_id, "", 1024, "", f"{ns}:buf:", 1, "d@v1", 10, 60000, event]
        return client.evalsha(sha, len(keys), *keys, *args)

    assert call(0, "job6")[0] > 0
    with pytest.raises(redis.ResponseError,
                       match=r'call_id must not contain "\|": job7\|a; nothing was written$'):
        call(1, "job7|a")
    assert call(2, "job7")[0] > 0
    assert call(2, "job7") == [-2]  # its resend
    assert client.llen(f"{ns}:buf:d@v1|*") == 2


def test_a_partition_key_percent_encoded_from_latin_1_still_runs_and_shows(client, namespace: str) -> None:
    """The README asks for UTF-8 bytes, but the script takes any member: a PHP emitter's
    rawurlencode of a Latin-1 'café' (caf%E9) made the dashboard, `flush_expired` (after its
    cut) and every claim of the batch fail on decoding the key; the batch went dead unrun."""
    from distbatch.stats import collect, top_buffers

    clock = ManualClock(0)
    b = Batcher(client, namespace=namespace, clock=clock, handoff=False)
    b.register("d", version="v1", source="orders", handler="m.h", batch={"count": 2, "window": "1m"})
    member = "d@v1|=caf%E9"
    tags = b.layout.tags
    shard = zlib.crc32(member.encode()) % len(tags) if len(tags) > 1 else 0
    ns, prefix = tags[shard], b.layout.id_prefix(shard)
    sha = client.script_load(source("accumulate").encode())
    names = ("regver", "call:php-1", "deadlines", "wake", "batchseq", "bindings",
             "ready", "stats", "rec:events", "rec:info", "rec:attempt", "open:d@v1", f"buf:{member}")
    keys = [f"{ns}:{k}" for k in names]
    cut = []
    for i in range(3):
        event = msgpack.packb([f"php-{i}", "orders", 1700000000000 + i, {"i": i}])
        args = [client.get(f"{ns}:regver"), f"c-{i}", "0", 1024, prefix, f"{ns}:buf:", 1, "d@v1", 2, 60000,
                event]
        cut += client.evalsha(sha, len(keys), *keys, *args)[1:]
    batch = b.records.get_batch(cut[2].decode())
    assert batch.partition_key == "caf\udce9" and [e.payload["i"] for e in batch.events] == [0, 1]
    assert collect(b)["bindings"]["d@v1"]["open_buffers_now"] == 1
    assert [row["partition_key"] for row in top_buffers(b, "d@v1")] == ["caf\udce9"]
    clock.advance(120_000)
    (expired,) = b.flush_expired()
    assert expired.partition_key == "caf\udce9" and len(expired.events) == 1
    claim = b.records.claim([batch.id], 10_000)
    assert claim is not None and claim.batch.partition_key == "caf\udce9"


def test_an_event_array_with_more_than_four_fields_is_read_by_its_first_four(client, namespace: str) -> None:
    """An emitter that added a field (a later version, another language's) made every event of
    the batch it joined undecodable: the batch went dead, the other producers' events with it."""
    b = Batcher(client, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="orders", handler="m.h", batch={"count": 2, "window": "1h"})
    b.emit("orders", {"i": 0})
    client.lset(b.keys.buffer("d@v1", None), 0,
                msgpack.packb(["go-0", "orders", 1700000000000, {"i": 0}, {"trace": "x"}]))
    (result,) = b.emit("orders", {"i": 1})
    assert result.batch is not None
    claim = b.records.claim([result.batch.id], 10_000)
    assert claim is not None
    assert [e.payload for e in claim.batch.events] == [{"i": 0}, {"i": 1}]
    assert claim.batch.events[0].id == "go-0" and claim.batch.events[0].emitted_at_ms == 1700000000000


@pytest.mark.parametrize("name", ["accumulate", "accumulate_one"])
def test_the_cli_prints_the_script_an_emitter_in_another_language_loads(redis_server: RedisServer,
                                                                        name: str) -> None:
    """README's recipe ("accumulate.lua with its @include lines expanded") expanded each once and
    missed includes within includes: the script failed at the first cut. `distbatch script` gives
    the text as distbatch loads it, and the SHA distbatch calls it by."""
    from click.testing import CliRunner

    from distbatch.cli import main as cli

    text = CliRunner().invoke(cli, ["script", name]).output
    sha = CliRunner().invoke(cli, ["script", name, "--sha"]).output.strip()
    assert "@include" not in text
    assert redis.Redis.from_url(redis_server.url).script_load(text) == sha


@pytest.mark.parametrize("script", ["accumulate", "accumulate_one"])
@pytest.mark.parametrize("case", ["unregistered", "count", "window", "open_set"])
def test_a_foreign_route_not_the_registered_bindings_is_refused_and_writes_nothing(
    redis_server: Any, namespace: str, script: str, case: str
) -> None:
    """A caller in another language names each route's binding, count, window and open set
    itself. Before, the script trusted them: an unregistered binding's events were stored and
    counted, and never delivered; a count of 5 for a binding registered with 2 cut a batch of
    5; another binding's open set let that binding's `drop` take these buffers. Each is refused
    now, naming the field and the value (a binding this shard does not hold: as a stale call,
    `[-1, epoch]`, reload), and nothing is written (the call key is as before, so the call sent
    again put right runs)."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, clock=ManualClock(0), handoff=False, shards=1)
    b.register("d", version="v1", source="orders", handler="m.h", batch={"count": 2, "window": "1m"})
    b.register("o", version="v1", source="other", handler="m.h", batch={"count": 2, "window": "1m"})
    ns = "{" + namespace + "}"
    sha = client.script_load(source(script).encode())
    head = [f"{ns}:{k}" for k in ("regver", "call:go-app-6", "deadlines", "wake", "batchseq", "bindings",
                                  "ready", "stats", "rec:events", "rec:info", "rec:attempt")]

    def call(call_id: str, binding: str, count: int, window_ms: int, open_set: str, i: int) -> Any:
        event = msgpack.packb([f"go-{i}", "orders", 1700000000000 + i, {"i": i}])
        buf = f"{ns}:buf:{binding}|*"
        version = client.get(f"{ns}:regver")
        if script == "accumulate":
            return client.evalsha(sha, len(head) + 2, *head, f"{ns}:{open_set}", buf, version, call_id, "",
                                  1024, "", f"{ns}:buf:", 1, binding, count, window_ms, event)
        return client.evalsha(sha, len(head) + 2, *head, f"{ns}:{open_set}", buf, version, 1024, "",
                              f"{ns}:buf:", binding, count, window_ms, "", call_id, event)

    assert call("c-0", "d@v1", 2, 60000, "open:d@v1", 0)[1:] == []  # one event in, a call key set
    before = {k: client.dump(k) for k in client.keys(f"{ns}:*")}
    wrong = {"unregistered": ("nope@v1", 2, 60000, "open:nope@v1", None),
             "count": ("d@v1", 5, 60000, "open:d@v1", r'count="5", window_ms="60000" of route 1 are not '
                       r'binding "d@v1"\'s registered count=2, window_ms=60000'),
             "window": ("d@v1", 2, 1000, "open:d@v1", r'count="2", window_ms="1000" of route 1 are not '),
             "open_set": ("d@v1", 2, 60000, "open:o@v1",
                          rf'open set key="{{{namespace}}}:open:o@v1" of route 1 '
                          rf'is not "{{{namespace}}}:open:d@v1"'),
             }[case]
    if wrong[-1] is None:
        assert call("c-1", *wrong[:-1], 1) == [-1, client.get(f"{ns}:regver")]
    else:
        with pytest.raises(redis.ResponseError, match=wrong[-1] + ".*; nothing was written"):
            call("c-1", *wrong[:-1], 1)
    assert {k: client.dump(k) for k in client.keys(f"{ns}:*")} == before  # not a byte written
    reply = call("c-1", "d@v1", 2, 60000, "open:d@v1", 1)  # the same call id, put right: runs
    assert reply[1:3] == [1, b"count"] and len(b.records.get_batch(reply[3].decode()).events) == 2


def test_own_emits_are_not_refused_while_a_register_is_under_way_on_another_shard(
        redis_server: Any, namespace: str) -> None:
    """A register writes shard by shard, each under its own epoch: y's reached shard 0 only (still
    under way, or its process died), then x's reached both, so both shards carry x's epoch and
    only shard 0 has y. An emitter reading shard 0 routes y's events to shard 1 under an epoch
    shard 1 agrees with, and the route check refused distbatch's own call as an unregistered
    binding, reported as "may or may not be stored" (the diff review). A binding a shard does not
    hold is a stale call now: the emitter brings that shard's copy up to the first's and stores."""
    from distbatch.keys import member_bytes
    from distbatch.shards import shard_of

    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, clock=ManualClock(0), handoff=False, shards=2)
    b.register("y", version="v1", source="ys", handler="m.h", batch={"count": 10, "window": "1h", "key": "k"})
    client.hdel(b.layout.keys[1].bindings, "y@v1")  # y's register has reached shard 0 only
    b.register("x", version="v1", source="xs", handler="m.h", batch={"count": 10, "window": "1h"})
    keys = [str(i) for i in range(64) if shard_of(member_bytes("y@v1", str(i)), 2) == 1][:3]
    results = b.emit_many("ys", [{"k": k} for k in keys])
    assert [r.partition_key for r in results] == keys
    assert b.emit("ys", {"k": keys[0]})[0].partition_key == keys[0]  # the single emit too
    assert client.hexists(b.layout.keys[1].bindings, "y@v1")  # the copy brought up to shard 0's


def test_a_route_the_script_refuses_writing_nothing_is_reported_not_sent(redis_server: Any,
                                                                        namespace: str) -> None:
    """A definition changed under the emitter's cached registry without a new epoch (a hostile
    writer's) makes the route check refuse distbatch's own call, writing nothing, as the error
    says. The emitter reported those events as "may or may not be stored" (the diff review):
    re-emitting them looked like it might duplicate. They are `not_sent` now."""
    import json as _json

    from distbatch import EmitError

    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, clock=ManualClock(0), handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 3, "window": "1h"})
    b.emit_many("s", [{"n": 0}])  # the registry is cached
    k = b.layout.keys[0]
    definition = _json.loads(client.hget(k.bindings, "d@v1"))
    definition["batch"]["count"] = 5
    client.hset(k.bindings, "d@v1", _json.dumps(definition, sort_keys=True, separators=(",", ":")))
    with pytest.raises(EmitError) as err:
        b.emit_many("s", [{"n": 1}, {"n": 2}])
    assert (err.value.stored, err.value.uncertain, err.value.not_sent) == ([], [], [0, 1]), str(err.value)
    assert """are not binding "d@v1"'s registered count=5""" in str(err.value)
