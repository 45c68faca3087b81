"""distbatch's direct send path (`roundtrip`): same replies as redis-py, never a reply out of turn."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from distbatch.roundtrip import execute, execute_one

from .redis_server import RedisServer

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
def client(one_redis: redis.Redis) -> redis.Redis:
    return one_redis


@pytest.mark.parametrize("single", [True, False])
def test_replies_match_redis_py_and_errors_come_back_as_exceptions(client: redis.Redis, single: bool) -> None:
    c: Any = redis.Redis(connection_pool=client.connection_pool, single_connection_client=single)
    sha = c.script_load(ECHO)
    argv = ("EVALSHA", sha, 1, "k:é", b"\x00\xff")
    assert execute_one(c, argv) == c.evalsha(sha, 1, "k:é", b"\x00\xff") == [b"k:\xc3\xa9", b"\x00\xff"]
    bad = ("EVALSHA", "0" * 40, 0)
    replies = execute(c, [argv, bad, ("INCRBY", "rt:n", 2)])
    assert replies[0] == [b"k:\xc3\xa9", b"\x00\xff"]
    assert isinstance(replies[1], redis.exceptions.NoScriptError)
    assert replies[2] == int(c.get("rt:n") or 0)
    with pytest.raises(redis.exceptions.NoScriptError):
        execute_one(c, bad)
    # arguments hiredis cannot pack itself go through redis-py's packer: taken or refused as
    # redis-py takes or refuses them (its pure-Python packer refuses a bytearray)
    odd = ("EVALSHA", sha, 1, bytearray(b"ba"), memoryview(b"mv"))
    try:
        expected = c.execute_command(*odd)
    except redis.exceptions.DataError:
        with pytest.raises(redis.exceptions.DataError):
            execute_one(c, odd)
    else:
        assert execute_one(c, odd) == expected == [b"ba", b"mv"]
    if not single:
        pool: Any = c.connection_pool
        assert not pool._in_use_connections  # every checkout was given back, errors included


def test_an_interrupted_read_closes_the_socket_so_no_reply_is_read_out_of_turn(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = redis.Redis.from_url(redis_server.url, single_connection_client=True)
    c.set("rt:a", "A")
    c.set("rt:b", "B")
    conn: Any = c.connection
    real = conn.read_response
    reads = 0

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 2:  # between two replies, before the second is read (a signal, a timeout...)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(conn, "read_response", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute(c, [("GET", "rt:a"), ("GET", "rt:b")])
    monkeypatch.undo()
    # the unread reply to GET rt:b must not be taken as the reply to the next command
    assert execute_one(c, ("GET", "rt:a")) == b"A"
    assert execute(c, [("GET", "rt:b"), ("GET", "rt:a")]) == [b"B", b"A"]


def test_an_interruption_just_after_the_send_closes_the_socket_too(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler's timeout (SIGALRM) can land after the command went out and before any reply
    is read; the reply left unread was the next command's on that pooled connection."""
    c = redis.Redis.from_url(redis_server.url, single_connection_client=True)
    c.set("rt:a", "A")
    c.set("rt:b", "B")
    conn: Any = c.connection
    real = conn.send_packed_command

    def sent_then_interrupted(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(conn, "send_packed_command", sent_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute_one(c, ("GET", "rt:b"))
    monkeypatch.undo()
    assert execute_one(c, ("GET", "rt:a")) == b"A"


def test_a_server_gone_mid_stream_is_a_connection_error_and_the_next_call_reconnects(
    redis_server: RedisServer,
) -> None:
    c = redis.Redis.from_url(redis_server.url, single_connection_client=True)
    execute_one(c, ("SET", "rt:c", "1"))
    victim = execute_one(c, ("CLIENT", "ID"))
    redis.Redis.from_url(redis_server.url).client_kill_filter(_id=victim)
    with pytest.raises(redis.ConnectionError):
        execute_one(c, ("GET", "rt:c"))
    assert execute_one(c, ("GET", "rt:c")) == b"1"


def test_a_single_connection_client_shared_by_threads_keeps_each_reply_with_its_command(
    redis_server: RedisServer,
) -> None:
    """A user's single-connection client used from several threads: redis-py serialises its
    commands with the client's lock, and so must the direct path, or replies cross."""
    c = redis.Redis.from_url(redis_server.url, single_connection_client=True)
    c.delete("rt:t0", "rt:t1", "rt:t2")
    errors: list[BaseException] = []

    def count(name: str) -> None:
        try:
            for n in range(1, 801):
                assert execute_one(c, ("INCRBY", name, 1)) == n
                assert execute(c, [("GET", name), ("INCRBY", name, 0)]) == [str(n).encode(), n]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=count, args=(f"rt:t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_single_emits_packed_call_is_the_command_its_lists_make(client: redis.Redis) -> None:
    """A single emit's packed call (`onecall.pack` of a `Single`: the parts kept per thread and
    source, packed once) is byte for byte what redis-py packs from the keys and arguments of the
    planned path's call (`OneCall.lists`), with a window clock, a non-ASCII partition key, a
    call id of any size and either TTL flag; and the SHA it names is the one Redis gives the
    script."""
    from distbatch import Batcher, ManualClock
    from distbatch.onecall import pack
    from distbatch.roundtrip import execute_packed
    from distbatch.scripts import NAMES, sha_of, source

    for name in NAMES:
        assert sha_of(name) == client.script_load(source(name))
    b = Batcher(client, namespace="packed", clock=ManualClock(1234), handoff=False, shards=1)
    b.register("p", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "1s", "key": "k"})
    b.emit("s", {"k": "warm"})  # loads the registry
    for k, call_id, keep_ttl in (("ünï {x}", 7, False), ("a", 2**62, True)):
        one = b.core.one("s", {"k": k})
        assert one is not None
        call = b.core.one_call(one, "e-1", call_id, keep_ttl)
        keys, args = call.lists()
        packed = b"".join(redis.Connection().pack_command("EVALSHA", sha_of("accumulate_one"), len(keys),
                                                          *keys, *args))
        single = b.core.single("s", "e-1")
        assert single is not None
        known = single.learn(k)
        assert pack(single.head, known[0], one.window_now, call_id, one.events[0], keep_ttl) == packed
        assert args[-4:] == [b"1234", call_id, one.events[0], b"1c" if keep_ttl else b"c"]  # c: checked
        client.script_load(source("accumulate_one"))
        reply = execute_packed(client, packed)
        assert len(reply) == 1 and reply[0] > 10**12  # stored; the server's own time comes back
        assert client.lrange(keys[-1], 0, -1) == [one.events[0]]
        assert client.zscore(b.keys.deadlines, keys[-1][len(b.keys.buffer_prefix):]) == 1234 + 1000
