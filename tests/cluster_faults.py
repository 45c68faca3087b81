"""A local Redis Cluster to break (replicas, a small cluster-node-timeout, nodes to kill or pause)
and the distbatch processes that run on it, for tests/test_cluster_faults.py."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from distbatch.testing import RedisServer, _cluster_ok

from .processes import Procs


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port free with its cluster bus port (+10000)."""
    for _ in range(1000):
        port = random.randint(30000, 39999)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port")


class FaultCluster:
    """`masters` masters, each with `replicas` replicas; small cluster-node-timeout."""

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000, *extra: str) -> None:
        self.replicas = replicas
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", str(node_timeout_ms), *extra, port=free_port())
                      for _ in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        return "redis+cluster://" + f"127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> FaultCluster:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            deadline = time.monotonic() + 30
            for node in self.nodes:
                c = redis.Redis(port=node.port)
                while not _cluster_ok(c):
                    assert time.monotonic() < deadline, "cluster did not come up"
                    time.sleep(0.05)
            if self.replicas:  # wait until every replica is in sync
                while len(self.masters()) * self.replicas != len(self.replica_nodes()) or not all(
                        redis.Redis(port=n.port).info("replication").get("master_link_status") == "up"
                        for n in self.replica_nodes()):
                    assert time.monotonic() < deadline, "replicas did not sync"
                    time.sleep(0.1)
            return self
        except BaseException:
            self.cleanup()
            raise

    def role(self, node: RedisServer) -> str:
        return redis.Redis(port=node.port).info("replication")["role"]

    def masters(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc and n.proc.poll() is None and self.role(n) == "master"]

    def replica_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc and n.proc.poll() is None and self.role(n) == "slave"]

    def node_of(self, key: str) -> RedisServer:
        c = redis.Redis(port=self.nodes[0].port)
        slot = c.execute_command("CLUSTER KEYSLOT", key)
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                try:
                    r = redis.Redis(port=n.port)
                    if self.role(n) == "master":
                        shards = r.execute_command("CLUSTER SLOTS")
                        for lo, hi, master, *_ in shards:
                            if lo <= slot <= hi:
                                port = int(master[1])
                                return next(x for x in self.nodes if x.port == port)
                except redis.RedisError:
                    continue
        raise RuntimeError("no owner")

    def replica_of(self, master: RedisServer) -> RedisServer:
        mid = redis.Redis(port=master.port).execute_command("CLUSTER MYID")
        mid = mid.decode() if isinstance(mid, bytes) else mid
        for n in self.replica_nodes():
            info = redis.Redis(port=n.port).info("replication")
            if int(info["master_port"]) == master.port:
                return n
        raise RuntimeError(f"no replica of {master.port} ({mid})")

    def wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                c = redis.Redis(port=n.port)
                while True:
                    try:
                        if _cluster_ok(c):
                            break
                    except redis.RedisError:
                        pass
                    assert time.monotonic() < deadline, "cluster not ok"
                    time.sleep(0.05)

    def client(self, **options: object) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **options)  # type: ignore[arg-type]

    def cleanup(self) -> None:
        for node in self.nodes:
            if node.proc and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)  # in case a test paused it
            node.cleanup()


def fleet(url: str, queue_url: str, namespace: str, logdir: Path) -> Procs:
    """distbatch processes on the cluster, RQ's queue and the handlers' records on `queue_url`."""
    return Procs(url, namespace, logdir, env={"DISTBATCH_QUEUE_URL": queue_url, "TEST_RECORD_URL": queue_url})


def wait_logged(procs: Procs, text: str, timeout: float = 30) -> None:
    """Until a process has logged `text` (a start-up line)."""
    deadline = time.monotonic() + timeout
    while not any(text in f.read_text(errors="replace") for f in procs.logdir.glob("*.log")):
        assert time.monotonic() < deadline, procs.logs()
        time.sleep(0.1)


def delivered_rows(queue_url: str) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(queue_url)
    return [json.loads(x) for x in r.lrange("test:delivered", 0, -1)]
