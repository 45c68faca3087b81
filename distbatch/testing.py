"""A private redis-server on a free loopback port, for tests and benchmarks (never a shared one)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, *extra: str, port: int | None = None, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="distbatch-redis-")
        self.args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if appendonly else "no", "--dir", self.dir,
            "--daemonize", "no", *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        with open(Path(self.dir) / "redis.log", "ab") as log:  # the server keeps its own copy
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.cleanup()  # a server that runs but never answered is not left behind
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def env_with_path() -> dict[str, str]:
    """Environment for child processes: the repo on PYTHONPATH, unbuffered output."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # the checkout, for tests.* and bench.*
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too and still a valid port."""
    for _ in range(1000):
        port = free_port()
        if port <= 55535:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _cluster_ok(client: redis.Redis) -> bool:
    info = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    text = info.decode() if isinstance(info, bytes) else str(info)  # raw or parsed, by redis-py version
    return "cluster_state:ok" in text or "'cluster_state': 'ok'" in text


class LocalCluster:
    """A Redis Cluster of `masters` redis-servers on free loopback ports, for tests and benchmarks."""

    def __init__(self, masters: int = 3, *extra: str) -> None:
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", "5000", *extra, port=cluster_port())
                      for _ in range(masters)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> LocalCluster:
        try:
            return self._start()
        except BaseException:
            self.cleanup()
            raise

    def _start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            while not _cluster_ok(client):
                if time.monotonic() > deadline:
                    raise RuntimeError("the local cluster did not come up")
                time.sleep(0.05)
        return self

    def client(self, **options: object) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **options)  # type: ignore[arg-type]

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
