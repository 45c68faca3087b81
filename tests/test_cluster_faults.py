"""distbatch on a Redis Cluster whose master fails over (its replica promoted) or hangs (SIGSTOP,
no replica to take over): found by a review of cluster faults; each failed before its fix."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distbatch import Batcher
from distbatch.errors import EmitError

from .cluster_faults import FaultCluster, RedisServer, delivered_rows, fleet, free_port, wait_logged

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def replicated() -> Iterator[FaultCluster]:
    """3 masters, a replica each, cluster-node-timeout 1 s (a dead master is replaced in ~2 s)."""
    c = FaultCluster(3, 1, 1000).start()
    yield c
    c.cleanup()


@pytest.fixture
def queue() -> Iterator[RedisServer]:
    s = RedisServer(port=free_port()).start()
    yield s
    s.cleanup()


def _recorded(cluster: FaultCluster, queue: RedisServer, ns: str, batch: dict[str, object]) -> Batcher:
    """A binding `r@v1` of source `s` whose handler records each batch on the queue's Redis."""
    b = Batcher.from_url(cluster.url, namespace=ns, queue_url=queue.url)
    b.register("r", version="v1", source="s", handler="tests.handlers.record", batch=batch)
    return b


def _kill_and_wait_for_promotion(cluster: FaultCluster, master: RedisServer) -> None:
    replica = cluster.replica_of(master)
    master.proc.kill()  # type: ignore[union-attr]
    master.proc.wait()  # type: ignore[union-attr]
    deadline = time.monotonic() + 20
    while cluster.role(replica) != "master":
        assert time.monotonic() < deadline, "the replica was not promoted"
        time.sleep(0.05)
    cluster.wait_ok()


def test_sweeper_keeps_sweeping_after_a_master_fails_over(replicated: FaultCluster, queue: RedisServer,
                                                          tmp_path: Path) -> None:
    """A `distbatch sweeper` runs; the master holding the slot of shard 0's wake channel (the
    one the sweeper's pub/sub connection is pinned to) is SIGKILLed and its replica promoted:
    the cluster is healthy again ~2 s later. Windows that run out afterwards - on any shard,
    even those whose master never failed - must still be cut by the sweeper.

    Before the fix: the sweeper logs `sweeper_step_failed: ConnectionError: Error 111 connecting to
    <dead node>` every 5 s for ever and cuts nothing on any shard: buffers stay open, their
    events (acknowledged by emit) never reach a handler."""
    ns = "rfo"
    b = _recorded(replicated, queue, ns, {"count": 100, "window": "200ms", "key": "k"})
    procs = fleet(replicated.url, queue.url, ns, tmp_path)
    try:
        procs.sweeper()
        wait_logged(procs, "sweeper_shards")
        b.emit_many("s", [{"k": f"k{i}"} for i in range(30)])  # windows before the fault: cut
        deadline = time.monotonic() + 10
        while b.open_buffers():
            assert time.monotonic() < deadline, procs.logs()
            time.sleep(0.1)

        _kill_and_wait_for_promotion(replicated, replicated.node_of(b.shards[0].wake))
        time.sleep(1.0)
        b = Batcher.from_url(replicated.url if replicated.nodes[0].proc.poll() is None else  # type: ignore[union-attr]
                             f"redis+cluster://127.0.0.1:{replicated.masters()[0].port}/0",
                             namespace=ns, queue_url=queue.url)
        b.emit_many("s", [{"k": f"k{i}"} for i in range(30)])  # over all three shards
        assert b.open_buffers() > 0
        deadline = time.monotonic() + 15
        while b.open_buffers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert b.open_buffers() == 0, (
            f"{b.open_buffers()} buffers still open 15 s after their 200 ms windows ran out, "
            f"the cluster healthy:\n{procs.logs()}")
    finally:
        procs.stop_all()


@pytest.fixture
def bare() -> Iterator[FaultCluster]:
    c = FaultCluster(3, 0, 1000).start()
    yield c
    c.cleanup()


@pytest.mark.parametrize("call", ["emit_many", "emit"])
def test_emit_to_a_paused_master_fails_within_two_socket_timeouts(bare: FaultCluster, call: str) -> None:
    """A master stops answering (SIGSTOP). A `Batcher.from_url` client waits 5 s per call
    (README: "Every client from_url makes waits 5 s per call"), and distbatch sends a call at
    most twice ("uncertain: sent but no answer came back twice"), so the emit should fail
    with an EmitError in ~10 s (allowed here: 30 s).

    Before the fix: emit_many blocks ~115 s (23 reads of 5 s each on the paused node: distbatch's
    resend goes through RedisCluster.execute_command, whose own retry-and-reinitialise loop
    runs under distbatch's `_twice`/`patient`), then raises EmitError."""
    b = Batcher.from_url(bare.url, namespace="pause", handoff=False)
    b.register("r", version="v1", source="s", handler="m.h", batch={"count": 100, "window": "1h", "key": "k"})
    b.emit_many("s", [{"k": f"k{i}"} for i in range(30)])  # warm: every node connected
    paused = bare.node_of(b.shards[0].wake)
    outcome: list[object] = []

    def run() -> None:
        started = time.monotonic()
        try:
            if call == "emit_many":
                b.emit_many("s", [{"k": f"k{i}"} for i in range(30)])  # over the three shards
            else:
                for i in range(30):  # single emits until one meets the paused shard
                    b.emit("s", {"k": f"k{i}"})
            outcome.append("returned")
        except EmitError as exc:
            outcome.append(exc)
        except Exception as exc:
            outcome.append(exc)
        outcome.append(time.monotonic() - started)

    paused.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(30)
        hung = t.is_alive()
    finally:
        paused.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    t.join(200)
    assert not hung, (f"{call} still blocked after 30 s on one paused master; it ended (the node "
                      f"resumed at 30 s) after {outcome[-1]:.0f} s with {outcome[0]!r}"[:600])
    assert isinstance(outcome[0], EmitError), outcome


@pytest.fixture
def partial() -> Iterator[FaultCluster]:
    """No replicas, `cluster-require-full-coverage no`: the other masters go on serving their
    slots while one is away - the case where 'a claim passes over a shard whose node is away'."""
    c = FaultCluster(3, 0, 1000, "--cluster-require-full-coverage", "no").start()
    yield c
    c.cleanup()


def test_a_paused_master_holds_up_no_other_shards_batches(partial: FaultCluster, queue: RedisServer,
                                                          tmp_path) -> None:  # type: ignore[no-untyped-def]
    """README: "a claim passes over a shard whose node is away and takes the other shards'
    batches". One master (neither the URL's node nor the namespace's) is paused (SIGSTOP); 20
    batches are made ready on the two live shards: a `distbatch worker` should run them all
    within 20 s.

    Before the fix: about one batch every 6 s (10 of 20 in 60 s), no warning logged: each claim round
    waits out socket timeouts on the hung node before taking the live shards' batches."""
    from distbatch.keys import member_bytes
    from distbatch.shards import shard_of

    ns = "paused"
    b = _recorded(partial, queue, ns, {"count": 1, "window": "1h", "key": "k"})
    procs = fleet(partial.url, queue.url, ns, tmp_path)
    try:
        procs.worker("--lease", "2s")
        wait_logged(procs, "worker_started")
        b.emit_many("s", [{"k": f"w{i}"} for i in range(30)])  # warm-up: every shard
        deadline = time.monotonic() + 20
        while len(delivered_rows(queue.url)) < 30:
            assert time.monotonic() < deadline, procs.logs()
            time.sleep(0.1)

        avoid = {partial.nodes[0].port, partial.node_of(b.keys.meta).port}
        victim = next(s for s in range(3) if partial.node_of(b.shards[s].wake).port not in avoid)
        node = partial.node_of(b.shards[victim].wake)
        live_keys = [f"x{i}" for i in range(500)
                     if shard_of(member_bytes("r@v1", f"x{i}"), 3) != victim][:20]
        node.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            time.sleep(3)  # the other masters mark it failed; they keep serving their own slots
            for k in live_keys:
                b.emit("s", {"k": k})  # to live shards only: each cuts a batch
            started = time.monotonic()
            while len(delivered_rows(queue.url)) < 50 and time.monotonic() - started < 20:
                time.sleep(0.2)
            got = len(delivered_rows(queue.url)) - 30
        finally:
            node.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        assert got == 20, f"only {got} of the live shards' 20 batches ran in 20 s while shard " \
                          f"{victim}'s master was paused\n{procs.logs()}"
    finally:
        procs.stop_all()
