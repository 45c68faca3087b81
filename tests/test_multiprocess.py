"""Producers in separate OS processes hammer the same buffers: nothing lost, doubled or oversized."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter

import redis

from distbatch import Batcher
from distbatch.codec import decode_events

from .redis_server import RedisServer, env_with_path

PRODUCERS, PER_PRODUCER, COUNT = 4, 5000, 7


def test_concurrent_producers_cut_exact_batches(redis_server: RedisServer) -> None:
    ns = "mp"
    b = Batcher.from_url(redis_server.url, namespace=ns)
    b.register("hot", version="v1", source="s", handler="m.h", batch={"count": COUNT, "window": "1h"})
    b.register("keyed", version="v1", source="s", handler="m.h",
               batch={"count": COUNT, "window": "1h", "key": "k"})
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.producer", redis_server.url, ns, "s",
                          str(p), str(PER_PRODUCER)], env=env_with_path(), stdout=subprocess.PIPE)
        for p in range(PRODUCERS)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out
    client = redis.Redis.from_url(redis_server.url)
    seen: dict[str, Counter] = {"hot@v1": Counter(), "keyed@v1": Counter()}
    batch_ids = client.zrange(b.keys.ready, 0, -1)
    assert len(batch_ids) == len(set(batch_ids))
    for bid in batch_ids:
        batch = b.records.get_batch(bid.decode())
        assert batch.reason == "count" and len(batch.events) == COUNT
        if batch.binding == "keyed@v1":
            assert {e.payload["k"] for e in batch.events} == {batch.partition_key}
        per_producer: dict[str, list[int]] = {}
        for e in batch.events:
            per_producer.setdefault(e.payload["p"], []).append(e.payload["i"])
        assert all(seq == sorted(seq) for seq in per_producer.values())  # arrival order kept
        seen[batch.binding].update((e.payload["p"], e.payload["i"]) for e in batch.events)
    for key in client.keys(b.keys.buffer_prefix + "*"):
        binding = key.decode().split(":buf:")[1].split("|")[0]
        events = decode_events(b"".join(client.lrange(key, 0, -1)))
        assert len(events) < COUNT
        seen[binding].update((e.payload["p"], e.payload["i"]) for e in events)
    expected = {(str(p), i) for p in range(PRODUCERS) for i in range(PER_PRODUCER)}
    for binding, counter in seen.items():
        assert set(counter) == expected, binding
        assert max(counter.values()) == 1, binding
    stats = client.hgetall(b.keys.stats)
    assert int(stats[b"events_in:hot@v1"]) == PRODUCERS * PER_PRODUCER
    assert int(stats[b"batches_count:hot@v1"]) == PRODUCERS * PER_PRODUCER // COUNT


def test_threads_and_a_forked_child_share_one_batcher(redis_server: RedisServer) -> None:
    """emit keeps one connection per thread and per process: no two ever share a socket.

    The child's replies have a different shape (two bindings, always cut), so a reply read by
    the wrong process fails loudly instead of passing unnoticed.
    """
    import os
    import threading

    b = Batcher.from_url(redis_server.url, namespace="fork")
    b.register("t", version="v1", source="s", handler="m.h", batch={"count": 10, "window": "1h"})
    for name in ("c1", "c2"):
        b.register(name, version="v1", source="c", handler="m.h", batch={"count": 1, "window": "1h"})
    b.emit("s", {"i": -1})  # the parent's connection exists before the fork
    pid = os.fork()
    if pid == 0:  # child: the same Batcher object, inherited
        ok = False
        try:
            ok = all(
                [r.batch is not None for r in b.emit("c", {"i": i})] == [True, True] for i in range(500)
            )
        finally:
            os._exit(0 if ok else 1)
    done: list[int] = []

    def produce(n: int) -> None:
        for i in range(n):
            (result,) = b.emit("s", {"i": i})
            assert result.binding == "t@v1"
        done.append(n)

    threads = [threading.Thread(target=produce, args=(300,)) for _ in range(3)]
    for t in threads:
        t.start()
    produce(299)
    for t in threads:
        t.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(done) == [299, 300, 300, 300]
    stats = redis.Redis.from_url(redis_server.url).hgetall(b.keys.stats)
    assert int(stats[b"events_in:t@v1"]) == 1 + 3 * 300 + 299 and int(stats[b"batches_count:t@v1"]) == 120
    assert int(stats[b"batches_count:c1@v1"]) == int(stats[b"batches_count:c2@v1"]) == 500


def _fork_from_c_in_a_fresh_process(url: str, body: str) -> None:
    """Run `body` (a test of a fork made from C) in a fresh interpreter, single-threaded as a
    pre-forking server's master is when it forks. Forked from C in this multi-threaded test
    process, the child could wait forever on any lock another thread held at that instant (the
    lease keepers of earlier tests, a logging write): POSIX lets such a child call nothing but
    async-signal-safe functions, and no fork hook runs to reset them."""
    code = f"import ctypes, os\nfrom distbatch import Batcher\nURL = {url!r}\n" + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=env_with_path())
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_fork_made_in_c_gets_its_own_emitter(redis_server: RedisServer) -> None:
    """A fork that skips CPython's fork hooks (uWSGI's pre-fork calls fork() from C): the child
    must not reuse its parent's emitter (socket, id and call counter), or the two would send the
    same call ids and one side's events would be taken for resends and never stored."""
    _fork_from_c_in_a_fresh_process(redis_server.url, """
        b = Batcher.from_url(URL, namespace="cfork")
        b.register("t", version="v1", source="s", handler="m.h", batch={"count": 10, "window": "1h"})
        b.emit("s", {"i": -1})
        parent_emitter = b.transport.emitter().id
        pid = ctypes.PyDLL(None).fork()  # fork() from C, keeping the GIL: no os.register_at_fork hook runs
        if pid == 0:
            ok = False
            try:
                emitter = b.transport.emitter().id
                ok = emitter != parent_emitter and len(b.emit("s", {"i": 0})) == 1
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert b.transport.emitter().id == parent_emitter
        (r,) = b.emit("s", {"i": 1})
        assert r.binding == "t@v1"
    """)
    counters = Batcher.from_url(redis_server.url, namespace="cfork").counters()
    assert counters["events_in:t@v1"] == 3  # the parent's two and the child's one: none taken for a resend


def test_a_forked_child_gives_its_events_ids_of_its_own(redis_server: RedisServer) -> None:
    """Event ids are a per-process prefix and a counter: a child forked in C (no fork hooks) must
    make its own prefix, or its events and its parent's would share ids within one batch."""
    _fork_from_c_in_a_fresh_process(redis_server.url, """
        b = Batcher.from_url(URL, namespace="forkids", handoff=False)
        b.register("t", version="v1", source="s", handler="m.h", batch={"count": 4, "window": "1h"})
        b.emit("s", {"who": "parent0"})
        pid = ctypes.PyDLL(None).fork()
        if pid == 0:
            ok = False
            try:
                ok = (len(b.emit("s", {"who": "child"})) == 1
                      and len(b.emit_many("s", [{"who": "child2"}])) == 1)
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        (r,) = b.emit("s", {"who": "parent1"})
        assert r.batch is not None
        ids = [e.id for e in r.batch.events]
        assert sorted(e.payload["who"] for e in r.batch.events) == ["child", "child2", "parent0", "parent1"]
        assert len(set(ids)) == 4, ids
    """)


def test_an_emitting_threads_client_freed_while_its_pool_is_locked_does_not_hang(
        redis_server: RedisServer, namespace: str) -> None:
    """Each emitting thread keeps a client of the pool; the collector may free one (its `Batcher`
    gone) while the same thread is inside the pool's `get_connection`, holding its lock, and the
    client gives its connection back to the pool as it goes. redis-py below 6.4 (a lock that is
    not reentrant) hangs there for good: pyproject.toml asks for 6.4."""
    import gc
    import threading

    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, handoff=False, shards=1)
    b.register("p", version="v1", source="s", handler="m.h", batch={"count": 10, "window": "1h"})
    done = threading.Event()

    def emit_then_free_inside_the_pools_lock() -> None:
        b.emit("s", {"n": 1})  # this thread's own client, on the pool
        with client.connection_pool._lock:  # as redis-py holds it where a collection may run
            b.transport._local.__dict__.clear()
            gc.collect()  # the thread's client freed: it gives its connection back to the pool
        done.set()

    threading.Thread(target=emit_then_free_inside_the_pools_lock, daemon=True).start()
    assert done.wait(10), "the thread hung giving its connection back to a pool it had locked"
    assert client.connection_pool._in_use_connections == set()
