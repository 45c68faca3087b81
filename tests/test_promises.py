"""README promises no test pinned (found by a review that checked each against real runs; they
held): `/healthz?strict=1`, `serve_plaintext`, the look-only ACL user's `dead list`/`show`, the
app ACL user's worker, sweeper and serve, and `with Batcher.from_url(...)`. Own redis-server and
processes on loopback ports."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import redis
from click.testing import CliRunner

from distbatch import Batcher
from distbatch.cli import main as cli
from distbatch.testing import RedisServer

from .processes import Procs, delivered, wait_for
from .test_serve import TOKEN, Server


def test_healthz_strict_turns_degraded_into_503(redis_server: RedisServer, namespace: str,
                                                tmp_path: Path) -> None:
    """README: degraded (no sweeper or worker seen) is 200; `?strict=1` turns it into 503."""
    s = Server(redis_server.url, tmp_path, namespace)
    try:
        loose = httpx.get(f"{s.url}/healthz", timeout=10)
        strict = httpx.get(f"{s.url}/healthz?strict=1", timeout=10)
    finally:
        s.stop()
    assert loose.status_code == 200 and loose.json()["status"] == "degraded", loose.text
    assert strict.status_code == 503 and strict.json()["status"] == "degraded", strict.text


def test_serve_beyond_loopback_without_tls_says_so(redis_server: RedisServer, namespace: str,
                                                   tmp_path: Path) -> None:
    """README: listening beyond loopback without TLS logs `serve_plaintext`; on loopback it does not."""
    wide = Server(redis_server.url, tmp_path, namespace, "--host", "0.0.0.0")
    wide.stop()
    assert "serve_plaintext host=0.0.0.0" in wide.log.read_text(), wide.log.read_text()
    narrow = Server(redis_server.url, tmp_path, namespace)
    narrow.stop()
    assert "serve_plaintext" not in narrow.log.read_text()


def test_the_look_only_acl_user_lists_and_shows_dead_batches(redis_server: RedisServer,
                                                             namespace: str) -> None:
    """README: `dead list`/`show` run with `~* +@read +time`."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None
    client.hset(b.records.keys_for(r.batch.id).rec_events, r.batch.id, b"\xc1")  # poison: dead at once
    from distbatch.executor import Executor
    from distbatch.handlers import HandlerResolver

    claim = b.records.claim([r.batch.id], 10_000)
    assert claim is not None
    Executor(b.records, HandlerResolver(["m"])).run(claim)
    user = f"look-{namespace}"
    client.acl_setuser(user, enabled=True, passwords=["+look-password-1"], keys=["*"],
                       commands=["+@read", "+time"])
    try:
        url = redis_server.url.replace("redis://", f"redis://{user}:look-password-1@")
        args = ["--redis-url", url, "--namespace", namespace]
        listed = CliRunner().invoke(cli, ["dead", "list", *args])
        assert listed.exit_code == 0 and json.loads(listed.output)["id"] == r.batch.id, listed.output
        shown = CliRunner().invoke(cli, ["dead", "show", r.batch.id, *args])
        assert shown.exit_code == 0 and json.loads(shown.output)["id"] == r.batch.id, shown.output
    finally:
        client.acl_deluser(user)


def test_worker_sweeper_and_serve_run_as_the_readme_app_user(redis_server: RedisServer, namespace: str,
                                                             tmp_path: Path) -> None:
    """README: apps, workers, sweepers and serve run as a user with `~* &* +@read +@write
    +@scripting +@pubsub +@transaction +@connection +@keyspace +time` (only the demo was run so)."""
    admin = redis.Redis.from_url(redis_server.url)
    user = f"app-{namespace}"
    admin.acl_setuser(user, enabled=True, passwords=["+app-password-123"], keys=["*"], channels=["*"],
                      commands=["+@read", "+@write", "+@scripting", "+@pubsub", "+@transaction",
                                "+@connection", "+@keyspace", "+time"])
    url = redis_server.url.replace("redis://", f"redis://{user}:app-password-123@")
    try:
        app = Batcher.from_url(url, namespace=namespace)
        binding = app.register(f"app-{namespace}", version="v1", source="s", handler="tests.handlers.record",
                               batch={"count": 3, "window": "300ms"})  # test:delivered is the session's
        with Procs(url, namespace, tmp_path) as procs:
            procs.worker()
            procs.sweeper()
            s = Server(url, tmp_path, namespace)
            try:
                posted = httpx.post(f"{s.url}/v1/sources/s/events", json=[{"n": i} for i in range(4)],
                                    headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
                assert posted.status_code == 200, posted.text
                app.emit("s", {"n": 4})  # 5 events: one cut by count, two by the sweeper's window
                def ours() -> int:
                    return sum(len(d["events"]) for d in delivered(admin) if d["binding"] == binding)

                wait_for(lambda: ours() == 5, 30, "5 events delivered", procs.logs)
                health: dict[str, object] = {}

                def ok() -> bool:  # a sweeper's heartbeat: on its first pass, each second after
                    health.update(httpx.get(f"{s.url}/healthz", timeout=10).json())
                    return health["status"] == "ok"

                wait_for(ok, 20, "/healthz ok", lambda: f"{health}\n{procs.logs()}")
            finally:
                s.stop()
            logs = procs.logs() + s.log.read_text()
        assert "NoPermission" not in logs and "Error:" not in logs, logs[-2000:]
    finally:
        admin.acl_deluser(user)


def test_a_batcher_used_as_a_context_manager_closes(redis_server: RedisServer, namespace: str) -> None:
    """README: `with Batcher.from_url(...) as batcher:` lets go of its connections on the way out."""
    admin = redis.Redis.from_url(redis_server.url)
    before = len(admin.client_list())
    with Batcher.from_url(redis_server.url, namespace=namespace) as b:
        b.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h"})
        assert len(b.emit("s", {"n": 1})) == 1
        assert len(admin.client_list()) > before
    wait_for(lambda: len(admin.client_list()) == before, 5, "the batcher's connections to close")
