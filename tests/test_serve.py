"""`distbatch serve` as a real server process, driven by a real HTTP client (httpx) and by curl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from distbatch import Batcher
from distbatch.keys import Keys
from distbatch.testing import RedisServer, env_with_path, free_port

from .processes import Procs, delivered, wait_for

TOKEN = "t0ken-for-the-serve-tests-0123456789"


class Server:
    def __init__(self, redis_url: str, logdir: Path, namespace: str, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logdir / f"serve-{self.port}.log"
        full_env = {**env_with_path(), "DISTBATCH_API_TOKENS": TOKEN, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distbatch.cli", "serve", "--redis-url", redis_url,
             "--namespace", namespace,
             "--port", str(self.port), *args],
            env=full_env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        wait_for(self._up, 20, "distbatch serve to listen", lambda: self.log.read_text())

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            httpx.get(f"{self.url}/openapi.json", timeout=1)
            return True
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def server(redis_server: RedisServer, tmp_path: Path, namespace: str) -> Iterator[Server]:
    s = Server(redis_server.url, tmp_path, namespace)
    yield s
    s.stop()


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
        yield c


@pytest.fixture
def batcher(redis_server: RedisServer, namespace: str) -> Batcher:
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("h", version="v1", source="orders/created", handler="tests.handlers.record",
               batch={"count": 3, "window": "1h", "key": "shop"})
    return b


def _post(api: httpx.Client, body: Any, content_type: str = "application/json", **kw: Any) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.post("/v1/sources/orders%2Fcreated/events", content=data,
                    headers={"Content-Type": content_type}, **kw)


def test_one_event_an_array_and_ndjson_are_stored_with_per_event_results(
    api: httpx.Client, batcher: Batcher
) -> None:
    r = _post(api, {"shop": "a", "n": 0})
    assert r.status_code == 200, r.text
    assert r.json() == {"events": 1, "results": [{"event": 0, "binding": "h@v1", "partition_key": "a",
                                                 "batch": None, "expired": None, "overflowed": 0}]}
    r = _post(api, [{"shop": "a", "n": 1}, {"shop": "b", "n": 2}, {"shop": "a", "n": 3}])
    results = r.json()["results"]
    assert [x["event"] for x in results] == [0, 1, 2]
    cut = results[2]["batch"]
    assert cut["reason"] == "count" and cut["size"] == 3
    assert [e.payload["n"] for e in batcher.records.get_batch(cut["id"]).events] == [0, 1, 3]
    ndjson = b'{"shop": "b", "n": 4}\n\n{"shop": "b", "n": 5}\n'
    r = _post(api, ndjson, "application/x-ndjson")
    assert r.status_code == 200 and r.json()["results"][1]["batch"]["size"] == 3
    assert batcher.counters()["events_in:h@v1"] == 6
    sparse = _post(api, [{"shop": "c"}] * 4, params={"results": "cuts"}).json()
    assert sparse["events"] == 4 and [x["event"] for x in sparse["results"]] == [2]


@pytest.mark.parametrize(("body", "ctype", "status", "code"), [
    (b'{"shop": "a"', "application/json", 400, "invalid_json"),
    (b'{"shop": "a"}\n{oops}\n', "application/x-ndjson", 400, "invalid_json"),
    (b'[{"shop": "a"}, 7]', "application/json", 422, "payload_type"),
    (b'{"shop": "a"}\n7\n', "application/x-ndjson", 422, "payload_type"),
    (b'{"shop": "a"}\n{"shop": "a", "n": 99999999999999999999999}\n', "application/x-ndjson", 422,
     "payload_unencodable"),
    (b'[{"shop": "a"}, {"shop": "a", "n": 99999999999999999999999}]', "application/json", 422,
     "payload_unencodable"),  # msgpack has no integers past 64 bits: refused, never rounded
    (b'[{"shop": "a"}, {"deep": ' + b"[" * 5000 + b"]" * 5000 + b"}]", "application/json", 400,
     "invalid_json"),  # too deep to parse: a clear 400, not a crash
    (b'{"shop": "a"}', "text/plain", 415, "content_type_unsupported"),
    (b'[{"shop": "a"}, {"shop": "a", "n": NaN}]', "application/json", 400, "invalid_json"),
    (b'[{"shop": "a"}, {"shop": "a", "n": -Infinity}]', "application/json", 400, "invalid_json"),
    (b'[{"shop": "a"}, {"shop": "a", "n": 1e400}]', "application/json", 400, "invalid_json"),
    (json.dumps([{"shop": "a"}, {"shop": "a", "blob": "x" * 300_000}]).encode(), "application/json", 413,
     "payload_too_large"),
    (json.dumps([{"shop": "a"}] * 101).encode(), "application/json", 413, "too_many_events"),
    (b"[" + b",".join([b'{"shop": "a", "pad": "' + b"y" * 1000 + b'"}'] * 600) + b"]",
     "application/json", 413, "body_too_large"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else "")
def test_bad_requests_get_a_status_and_a_stable_code_and_store_nothing(
    redis_server: RedisServer, tmp_path: Path, batcher: Batcher, namespace: str, body: bytes, ctype: str,
    status: int, code: str,
) -> None:
    s = Server(redis_server.url, tmp_path, namespace, "--max-events", "100", "--max-body-bytes", "500000",
               "--max-event-bytes", "200000")
    try:
        r = httpx.post(f"{s.url}/v1/sources/orders%2Fcreated/events", content=body,
                       headers={"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == status, r.text
        assert r.json()["code"] == code and r.json()["message"]
        if code in ("payload_type", "payload_too_large", "payload_unencodable"):
            assert r.json()["event"] == 1
        if ctype == "application/x-ndjson":
            assert r.json()["line"] == 2
        assert batcher.counters().get("events_in:h@v1", 0) == 0
        assert batcher.open_buffers() == 0
    finally:
        s.stop()


def test_auth_is_required_and_checked(server: Server, batcher: Batcher) -> None:
    url = f"{server.url}/v1/sources/orders%2Fcreated/events"
    missing = httpx.post(url, json={"shop": "a"})
    assert missing.status_code == 401 and missing.json()["code"] == "auth_missing"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(url, json={"shop": "a"}, headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
    assert wrong.status_code == 401 and wrong.json()["code"] == "auth_invalid"
    basic = httpx.post(url, json={"shop": "a"}, headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    assert batcher.counters().get("events_in:h@v1", 0) == 0
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes need no token
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v1/sources/{source}/events" in doc["paths"]


def test_an_unbound_source_is_a_404_not_silence(api: httpx.Client, batcher: Batcher) -> None:
    r = api.post("/v1/sources/orders.craeted/events", json={"shop": "a"})
    assert r.status_code == 404 and r.json()["code"] == "source_unbound" and "orders.craeted" in r.text
    empty = api.post("/v1/sources/orders.craeted/events", json=[])  # no events: still a typo
    assert empty.status_code == 404 and empty.json()["code"] == "source_unbound"
    bound = api.post("/v1/sources/orders%2Fcreated/events", json=[])
    assert bound.status_code == 200 and bound.json() == {"events": 0, "results": []}


def test_the_cli_and_http_refuse_the_same_non_json_numbers(api: httpx.Client, batcher: Batcher,
                                                          redis_server: RedisServer, namespace: str) -> None:
    """Four doors, one set of semantics: what HTTP refuses as not JSON, so does `distbatch emit`."""
    from click.testing import CliRunner

    from distbatch.cli import main as cli

    for body in ('{"shop": NaN}', '{"shop": "a", "n": Infinity}', '{"shop": "a", "n": -1e999}'):
        r = api.post("/v1/sources/orders%2Fcreated/events", content=body,
                     headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_json", body
        out = CliRunner().invoke(cli, ["emit", "orders/created", body, "--redis-url", redis_server.url,
                                       "--namespace", namespace])
        assert out.exit_code == 1 and "not JSON" in out.output, out.output
    assert batcher.counters().get("events_in:h@v1", 0) == 0


def test_serve_refuses_to_start_without_auth(redis_server: RedisServer) -> None:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "distbatch.cli", "serve", "--redis-url", redis_server.url,
             "--port", str(free_port()), *args],
            env={**env_with_path(), **(env or {})}, capture_output=True, text=True, timeout=30)

    none = run()
    assert none.returncode != 0 and "DISTBATCH_API_TOKENS" in none.stderr
    public = run("--insecure-no-auth", "--host", "0.0.0.0")
    assert public.returncode != 0 and "loopback" in public.stderr
    weak = run(env={"DISTBATCH_API_TOKENS": "secret"})
    assert weak.returncode != 0 and "16+" in weak.stderr
    cluster = subprocess.run(
        [sys.executable, "-m", "distbatch.cli", "serve", "--redis-url", "redis+cluster://127.0.0.1:7000/"],
        env={**env_with_path(), "DISTBATCH_API_TOKENS": TOKEN}, capture_output=True, text=True, timeout=30)
    assert cluster.returncode != 0 and "--queue-url" in cluster.stderr


def test_insecure_no_auth_on_loopback_serves(
    redis_server: RedisServer, tmp_path: Path, batcher: Batcher, namespace: str
) -> None:
    s = Server(redis_server.url, tmp_path, namespace, "--insecure-no-auth", env={"DISTBATCH_API_TOKENS": ""})
    try:
        r = httpx.post(f"{s.url}/v1/sources/orders%2Fcreated/events", json={"shop": "z"})
        assert r.status_code == 200 and r.json()["events"] == 1
        # Without auth, loopback keeps other machines out, not a web page in the user's browser:
        # it can post without a preflight (no content type), or read through a rebound name.
        events = f"{s.url}/v1/sources/orders%2Fcreated/events"
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": "null"}, {"Host": "rebind.evil.example"}):
            r = httpx.post(events, content=b'{"shop": "x"}', headers=headers)
            assert r.status_code == 403 and r.json()["code"] == "not_local", (headers, r.text)
        r = httpx.get(f"{s.url}/api/overview", headers={"Host": f"rebind.evil.example:{s.port}"})
        assert r.status_code == 403
        r = httpx.post(events, json={"shop": "y"}, headers={"Origin": f"http://localhost:{s.port}",
                                                            "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200
        assert batcher.counters()["events_in:h@v1"] == 2  # the refused ones stored nothing
    finally:
        s.stop()


def test_healthz_tracks_redis_sweepers_and_workers(tmp_path: Path, namespace: str) -> None:
    own = RedisServer().start()
    procs = Procs(own.url, namespace, tmp_path)
    Batcher.from_url(own.url, namespace=namespace, handoff=False).register(
        "x", version="v1", source="x", handler="m.h", batch={"count": 100, "window": "1h"})
    s = Server(own.url, tmp_path, namespace)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert httpx.post(f"{s.url}/v1/sources/x/events", json={"a": 0}, headers=auth).status_code == 200
        h = httpx.get(f"{s.url}/healthz").json()
        assert h["status"] == "degraded" and h["sweepers"] == 0 and h["workers"] == 0
        assert httpx.get(f"{s.url}/healthz", params={"strict": "1"}).status_code == 503
        procs.sweeper()
        procs.worker()
        wait_for(lambda: httpx.get(f"{s.url}/healthz").json()["status"] == "ok", 20, "healthz ok",
                 procs.logs)
        # a worker registration a hostile writer garbled once made the probe answer 500
        c = redis.Redis.from_url(own.url)
        c.sadd(f"rq:workers:{Keys(namespace).queue_name}", "rq:worker:junk")
        c.hset("rq:worker:junk", mapping={"pid": "not-a-pid", "last_heartbeat": "garbage"})
        h = httpx.get(f"{s.url}/healthz")
        assert h.status_code == 200 and h.json()["workers"] == 1, h.text
        # Redis lost its data (a restart without persistence): RQ's registry of workers is gone
        # for good (it is written once, at a worker's start); distbatch's heartbeats come back
        c.delete(f"rq:workers:{Keys(namespace).queue_name}", "rq:workers", "rq:worker:junk",
                 Keys(namespace).workers)
        wait_for(lambda: httpx.get(f"{s.url}/healthz").json()["workers"] == 1, 20,
                 "the worker counted again", procs.logs)
        procs.stop_all()
        own.stop()
        down = httpx.get(f"{s.url}/healthz")
        assert down.status_code == 503 and down.json()["status"] == "down"
        # a bound source, bindings cached: the connection is refused, so nothing can be stored
        r = httpx.post(f"{s.url}/v1/sources/x/events", json=[{"a": 1}, {"a": 2}], headers=auth)
        assert r.status_code == 503 and r.json()["code"] == "redis_unavailable", r.text
        for path in ("/api/overview", "/api/dead", "/api/dead/1", "/metrics"):
            down = httpx.get(f"{s.url}{path}", headers=auth)
            assert down.status_code == 503 and down.json()["code"] == "redis_unavailable", path
    finally:
        s.stop()
        procs.stop_all()
        own.cleanup()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_emits_and_a_worker_delivers(server: Server, redis_server: RedisServer, batcher: Batcher,
                                          tmp_path: Path, namespace: str) -> None:
    """A non-Python producer: curl posts NDJSON; a real worker runs the handler."""
    direct = redis.Redis.from_url(redis_server.url)
    direct.delete("test:delivered")
    procs = Procs(redis_server.url, namespace, tmp_path)
    try:
        procs.worker()
        lines = "".join(json.dumps({"shop": f"s{i % 2}", "n": i}) + "\n" for i in range(12))
        out = subprocess.run(
            ["curl", "-sS", "-X", "POST", "--data-binary", "@-", "-H", "Content-Type: application/x-ndjson",
             "-H", f"Authorization: Bearer {TOKEN}",
             f"{server.url}/v1/sources/orders%2Fcreated/events"],
            input=lines, capture_output=True, text=True, timeout=30, env={**os.environ})
        body = json.loads(out.stdout)
        assert body["events"] == 12 and sum(r["batch"] is not None for r in body["results"]) == 4
        wait_for(lambda: len(delivered(direct)) == 4, 30, "4 batches delivered", procs.logs)
        assert sorted(p["n"] for d in delivered(direct) for p in d["payloads"]) == list(range(12))
    finally:
        procs.stop_all()


def test_tokens_come_from_a_file_too(redis_server: RedisServer, tmp_path: Path, batcher: Batcher,
                                     namespace: str) -> None:
    other = "second-token-from-the-file-0123"
    (tmp_path / "tokens").write_text(f"# rotated 2026-11\n{other}  # the new one\n\n")
    s = Server(redis_server.url, tmp_path, namespace, "--token-file", str(tmp_path / "tokens"))
    try:
        for token in (TOKEN, other):  # the env's and the file's are both accepted
            r = httpx.post(f"{s.url}/v1/sources/orders%2Fcreated/events", json={"shop": "a"},
                           headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
        r = httpx.post(f"{s.url}/v1/sources/orders%2Fcreated/events", json={"shop": "a"},
                       headers={"Authorization": "Bearer # rotated 2026-11"})
        assert r.status_code == 401
    finally:
        s.stop()


def test_a_batch_id_naming_no_shard_is_not_found(api: httpx.Client, batcher: Batcher) -> None:
    for bid in ("1.0", "7.3", "-1", "x"):
        for method, path in (("GET", f"/api/dead/{bid}"), ("POST", f"/api/dead/{bid}/replay"),
                             ("POST", f"/api/dead/{bid}/purge")):
            r = api.request(method, path)
            assert r.status_code == 404 and r.json()["code"] == "not_dead", (method, path, r.text)


def test_an_unknown_results_mode_is_refused_before_anything_is_stored(api: httpx.Client,
                                                                      batcher: Batcher) -> None:
    r = api.post("/v1/sources/orders%2Fcreated/events", params={"results": "bogus"}, json={"shop": "a"})
    assert r.status_code == 400 and r.json()["code"] == "results_invalid", r.text
    assert batcher.counters().get("events_in:h@v1", 0) == 0


def test_rqs_worker_registry_read_for_plain_rq_workers_skips_a_garbled_entry() -> None:
    """The fallback count (plain `rq worker`s, which send no distbatch heartbeat): a registration a
    hostile writer garbled once made `Worker.all` raise, and the probe answer 500."""
    import datetime

    import fakeredis
    from rq.utils import utcformat

    from distbatch.dispatch import Dispatcher
    from distbatch.serve.health import _live_workers

    client = fakeredis.FakeRedis()
    keys = Keys("hz")
    dispatcher = Dispatcher(client, keys)
    workers = f"rq:workers:{keys.queue_name}"
    now = utcformat(datetime.datetime.now(datetime.UTC))
    for name, beat in (("live", now), ("junk", "garbage"), ("old", "2001-01-01T00:00:00.000000Z")):
        client.sadd(workers, f"rq:worker:{name}")
        client.hset(f"rq:worker:{name}", mapping={"pid": "not-a-pid", "last_heartbeat": beat})
    assert _live_workers(dispatcher) == 1


def test_a_client_retry_with_an_idempotency_key_stores_its_events_once(
        tmp_path: Path, namespace: str, batcher: Batcher) -> None:
    """A client that timed out waiting (Redis paused) and sent the POST again stored every event
    twice: HTTP had nothing like the library's call ids. With an `Idempotency-Key`, the retry is
    told the first is in flight (409) until it is done, then gets its response, stored once."""
    import signal
    import time

    own = RedisServer().start()  # paused below: not the shared test server
    server: Server | None = None
    try:
        b = Batcher.from_url(own.url, namespace=namespace, handoff=False)
        b.register("h", version="v1", source="orders/created", handler="m.h",
                   batch={"count": 100, "window": "1h", "key": "shop"})
        server = Server(own.url, tmp_path, namespace)
        events = [{"shop": "a", "n": i} for i in range(3)]
        headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "order-batch-17"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=0.5) as api:
            assert own.proc is not None
            os.kill(own.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(httpx.TimeoutException):
                    _post(api, events)  # the client gives up; the server goes on
            finally:
                os.kill(own.proc.pid, signal.SIGCONT)
            deadline, said = time.monotonic() + 10, []
            while (retry := _post(api, events)).status_code == 409 and time.monotonic() < deadline:
                said.append(retry.json()["code"])  # the first one still being stored
                time.sleep(0.05)
            assert set(said) <= {"idempotency_key_in_flight"}
            assert retry.status_code == 200 and retry.headers.get("idempotent-replayed") == "true"
            assert [r["event"] for r in retry.json()["results"]] == [0, 1, 2]
            assert b.counters()["events_in:h@v1"] == 3  # once
            other = _post(api, [{"shop": "b"}])  # the same key for another request
            assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
            b.register("g", version="v1", source="elsewhere", handler="m.h",
                       batch={"count": 100, "window": "1h"})
            for path in ("/v1/sources/elsewhere/events",  # the same body to another source
                         "/v1/sources/orders%2Fcreated/events?results=cuts"):  # another response
                again = api.post(path, content=json.dumps(events).encode(),
                                 headers={"Content-Type": "application/json"})
                assert again.status_code == 422 and again.json()["code"] == "idempotency_key_reused"
            bad = api.post("/v1/sources/orders%2Fcreated/events", content=b"[1]",
                           headers={"Content-Type": "application/json", "Idempotency-Key": "k2"})
            assert bad.status_code == 422  # stored nothing: the key stays free for the fixed body
            fixed = api.post("/v1/sources/orders%2Fcreated/events", content=b'[{"shop": "c"}]',
                             headers={"Content-Type": "application/json", "Idempotency-Key": "k2"})
            assert fixed.status_code == 200 and "idempotent-replayed" not in fixed.headers
            assert b.counters()["events_in:h@v1"] == 4
    finally:
        if server is not None:
            server.stop()
        own.cleanup()


def test_a_mistake_in_the_redis_url_stops_serve_with_one_line_an_outage_does_not(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """A database the server lacks printed uvicorn's traceback (exit 3); a wrong password started
    serve anyway, answering every request "Redis unreachable". Redis away is no mistake: serve
    starts and /healthz says so."""
    locked = RedisServer().start()
    try:
        redis.Redis.from_url(locked.url).config_set("requirepass", "right-password-0123")
        def run(url: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "distbatch.cli", "serve", "--redis-url", url,
                 "--port", str(free_port())],
                env={**env_with_path(), "DISTBATCH_API_TOKENS": TOKEN}, capture_output=True, text=True,
                timeout=30)

        no_db = run(redis_server.url.rsplit("/", 1)[0] + "/99")
        assert no_db.returncode == 1 and "Traceback" not in no_db.stderr, no_db.stderr
        assert no_db.stderr.startswith("Error: ") and "DB index is out of range" in no_db.stderr
        wrong = run(f"redis://:wrong-password@127.0.0.1:{locked.port}/0")
        assert wrong.returncode == 1 and "Traceback" not in wrong.stderr, wrong.stderr
        assert wrong.stderr.startswith("Error: ") and "wrong-password" not in wrong.stderr
    finally:
        locked.cleanup()
    away = Server(f"redis://127.0.0.1:{free_port()}/0", tmp_path, "away")
    try:
        health = httpx.get(f"{away.url}/healthz", timeout=10)
        assert health.status_code == 503 and away.proc.poll() is None
    finally:
        away.stop()


def test_redis_refusing_writes_gets_a_json_503_and_wrong_routes_a_json_error(
        api: httpx.Client, batcher: Batcher, redis_server: RedisServer) -> None:
    """Out of memory (or read-only), a request with an Idempotency-Key, or of no event, got a
    plain-text 500 and a traceback; a mistyped path or method got plain text too."""
    admin = redis.Redis.from_url(redis_server.url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        r = api.post("/v1/sources/orders%2Fcreated/events", content=b'[{"shop": "a"}]',
                     headers={"Content-Type": "application/json", "Idempotency-Key": "oom-1"})
        assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
        assert r.json()["code"] == "redis_refused" and "OutOfMemoryError" in r.json()["message"]
        # no event: nothing to store, and Redis past maxmemory still answers the reads (the
        # bindings, for a typo'd source's 404) once they are not asked in a MULTI
        r = api.post("/v1/sources/orders%2Fcreated/events", content=b"[]",
                     headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json() == {"events": 0, "results": []}, r.text
        r = api.post("/v1/sources/typo/events", content=b"[]", headers={"Content-Type": "application/json"})
        assert r.status_code == 404 and r.json()["code"] == "source_unbound", r.text
    finally:
        admin.config_set("maxmemory", "0")
    assert batcher.counters().get("events_in:h@v1", 0) == 0
    r = api.post("/v1/sources/orders%2Fcreated/events", content=b'{"shop": "a"}',
                 headers={"Content-Type": "application/json", "Idempotency-Key": "oom-1"})
    assert r.status_code == 200 and batcher.counters()["events_in:h@v1"] == 1  # nothing held the key
    for method, path, status, code in (
            ("POST", "/v1/source/orders/events", 404, "not_found"),
            ("GET", "/v1/sources/orders%2Fcreated/events", 405, "method_not_allowed")):
        r = api.request(method, path)
        assert r.status_code == status and r.headers["content-type"] == "application/json", r.text
        assert r.json()["code"] == code and "/v1/sources/<source>/events" in r.json()["message"]


def test_a_client_stalled_mid_body_holds_neither_its_connection_nor_a_shutdown(
        redis_server: RedisServer, tmp_path: Path, batcher: Batcher, namespace: str) -> None:
    """A client that sent part of its body and waits kept serve running after SIGTERM for good
    (every rolling deploy ended in SIGKILL), and held its connection for as long as it liked."""
    import socket
    import time

    server = Server(redis_server.url, tmp_path, namespace, "--body-timeout", "1s", "--shutdown-grace", "2s")
    stalled = []
    try:
        def stall() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"POST /v1/sources/orders%2Fcreated/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"sh")
            stalled.append(s)
            return s

        s = stall()
        s.settimeout(10)
        answer = b""
        while b"}" not in answer:  # headers and body may come in two reads
            got = s.recv(4096)
            assert got, answer
            answer += got
        assert b" 408 " in answer.split(b"\r\n")[0] and b"body_timeout" in answer, answer
        stall()
        time.sleep(0.3)
        server.proc.terminate()
        t0 = time.monotonic()
        server.proc.wait(15)
        assert time.monotonic() - t0 < 5  # the grace (2 s), or the body's timeout (1 s)
    finally:
        for s in stalled:
            s.close()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    assert batcher.counters().get("events_in:h@v1", 0) == 0


def test_a_cut_of_a_record_another_emitter_spoiled_is_answered_and_kept_once(
        api: httpx.Client, batcher: Batcher) -> None:
    """The response counted a cut batch's events by decoding them, after the store: a foreign
    emitter's event of another shape made that a bare 500, the Idempotency-Key stayed pending,
    and the retry after its minute stored the events again."""
    import msgpack

    batcher.emit("orders/created", {"shop": "a"})
    buffer = batcher.keys.buffer("h@v1", "a")
    redis.Redis(connection_pool=batcher.client.connection_pool).lset(
        buffer, 0, msgpack.packb(["go-1", "orders/created", 1, {"shop": "a"}, "a fifth field"]))
    api.headers["Idempotency-Key"] = "spoiled-1"
    first = _post(api, [{"shop": "a"}, {"shop": "a"}])
    assert first.status_code == 200, first.text
    cut = first.json()["results"][1]["batch"]
    assert cut["reason"] == "count" and cut["size"] == 3
    again = _post(api, [{"shop": "a"}, {"shop": "a"}])
    assert again.status_code == 200 and again.headers.get("idempotent-replayed") == "true"
    assert batcher.counters()["events_in:h@v1"] == 3  # stored once


def test_an_unexpected_fault_after_the_store_is_json_and_replayed_not_stored_again(
        tmp_path: Path, redis_server: RedisServer, namespace: str, batcher: Batcher) -> None:
    """Any fault of serve's own after the events went in: a JSON 500 that says they may be stored,
    kept under the Idempotency-Key, so a retry is told the same instead of storing them twice."""
    hook = tmp_path / "sitecustomize.py"  # the serve process's result builder fails
    hook.write_text("import distbatch.serve.events as e\n"
                    "def boom(r):\n    raise RuntimeError('a fault of our own')\n"
                    "e.result_json = boom\n")
    server = Server(redis_server.url, tmp_path, namespace,
                    env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{env_with_path()['PYTHONPATH']}"})
    try:
        with httpx.Client(base_url=server.url, timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "f-1"}) as c:
            first = _post(c, [{"shop": "z"}])
            assert first.status_code == 500 and first.json()["code"] == "internal_error"
            assert "may have been stored" in first.json()["message"]
            again = _post(c, [{"shop": "z"}])
            assert again.status_code == 500 and again.headers.get("idempotent-replayed") == "true"
        assert batcher.counters()["events_in:h@v1"] == 1
    finally:
        server.stop()


def test_values_json_has_no_type_for_are_shown_not_a_500() -> None:
    """Go's []byte, JS's Date and int-keyed maps arrive through msgpack in a dead batch's payloads:
    /api/dead/<id> answered 500 on them, while `distbatch dead show` showed them."""
    import msgpack

    from distbatch.serve.events import json_response

    shown = json.loads(json_response({"raw": b"\x00\x01", "at": msgpack.Timestamp(1, 0), 7: "int key",
                                      "key": "caf\udce9"}).body)
    assert shown == {"raw": "b'\\x00\\x01'", "at": "Timestamp(seconds=1, nanoseconds=0)", "7": "int key",
                     "key": "caf\udce9"}


def _raw(port: int, *parts: bytes, pause_s: float = 0.0) -> tuple[bytes, float]:
    """Send `parts` on a fresh connection, then read until the server closes it: (what it said,
    seconds from the last part to the close)."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for part in parts:
            try:
                sock.sendall(part)
            except OSError:  # closed on us mid-send: what it said is read below
                break
            time.sleep(pause_s)
        sent, said = time.monotonic(), b""
        try:
            while chunk := sock.recv(65536):
                said += chunk
        except ConnectionResetError:
            pass
        return said, time.monotonic() - sent


def test_a_request_head_without_end_or_that_never_ends_is_cut_off(redis_server: RedisServer, tmp_path: Path,
                                                                   namespace: str) -> None:
    """uvicorn bounded neither a head's size nor its time: three clients with no token sending
    one header without end held 300 MB and the event loop (/healthz silent for 30 s), and one
    sending a byte now and then held its connection for good."""
    server = Server(redis_server.url, tmp_path, namespace, "--header-timeout", "1s")
    try:
        said, _ = _raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ",
                       *[b"a" * 16384] * 64)  # 1 MiB of one header's value
        assert said.startswith(b"HTTP/1.1 431 ") and b"head_too_large" in said
        said, waited = _raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert said.startswith(b"HTTP/1.1 408 ") and b"head_timeout" in said and 0.5 < waited < 5
        said, waited = _raw(server.port)  # a connection that never asks anything
        assert said.startswith(b"HTTP/1.1 408 ") and waited < 5
        with httpx.Client(base_url=server.url, timeout=5) as c:  # kept alive across requests
            for _ in range(3):
                assert c.get("/healthz").status_code in (200, 503)
        big = {"X-Many": "v" * 8000}  # large but fair heads pass
        assert httpx.get(f"{server.url}/healthz", headers=big, timeout=5).status_code in (200, 503)
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
        for size in (66_000, 100_000):  # a head that ends in the read after the first: it passed
            said, _ = _raw(server.port, head + b"a" * size + b"\r\n\r\n")
            assert said.startswith(b"HTTP/1.1 431 ") and said.count(b"HTTP/1.1") == 1, (size, said[:200])
        said, _ = _raw(server.port, head + b"a" * 60_000 + b"\r\n\r\n")
        assert said.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 503 ")), said[:200]
    finally:
        server.stop()


def test_a_key_taken_while_redis_timed_out_is_said_to_be_held(tmp_path: Path, namespace: str) -> None:
    """The key's SET ran once Redis came back, after the 503 had said nothing was stored: retries
    met 409 for a minute, with nothing in the 503 to say why."""
    import signal
    import time

    own = RedisServer().start()
    server: Server | None = None
    try:
        b = Batcher.from_url(own.url, namespace=namespace, handoff=False)
        b.register("h", version="v1", source="orders/created", handler="m.h",
                   batch={"count": 100, "window": "1h", "key": "shop"})
        server = Server(f"{own.url}?socket_timeout=1", tmp_path, namespace)
        headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "stalled-1"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as api:
            assert own.proc is not None
            os.kill(own.proc.pid, signal.SIGSTOP)
            try:
                first = _post(api, [{"shop": "a"}])
            finally:
                os.kill(own.proc.pid, signal.SIGCONT)
            assert first.status_code == 503 and first.json()["code"] == "redis_unavailable"
            assert "may be held a minute" in first.json()["message"]
            time.sleep(0.2)
            retry = _post(api, [{"shop": "a"}])
            assert retry.status_code == 409 and retry.json()["code"] == "idempotency_key_in_flight"
            assert b.counters().get("events_in:h@v1", 0) == 0
    finally:
        if server is not None:
            server.stop()
        own.cleanup()


def test_a_hash_inside_a_token_of_the_file_is_refused_not_cut(tmp_path: Path) -> None:
    """'abcdefghijklmnop#rest' was read as its first 16 characters: clients sending the whole
    token got 401, and the prefix alone let anyone in."""
    from distbatch import ConfigError
    from distbatch.exposure import read_tokens

    path = tmp_path / "tokens"
    path.write_text("#a comment\n  # another\nfirst-token-0123456789 # a note\n\tsecond-token-0123456789#x\n")
    with pytest.raises(ConfigError) as err:
        read_tokens("", path)
    assert "line 4" in str(err.value) and "second-token" not in str(err.value)  # no secret in logs
    path.write_text("#a comment\n  # another\nfirst-token-0123456789 # a note\nsecond-token-0123456789\t#x\n")
    assert read_tokens("", path) == {"first-token-0123456789", "second-token-0123456789"}


def test_a_number_json_has_not_is_named_where_it_is(api: httpx.Client, batcher: Batcher) -> None:
    """5,000 events with a NaN in event 4321 were answered only "NaN is not JSON"."""
    events = [{"shop": "a", "price": 1.5} for _ in range(5000)]
    text = json.dumps(events).encode()
    at = text.index(b"1.5", len(json.dumps(events[:4321])))  # event 4321's price
    r = _post(api, text[:at] + b"NaN" + text[at + 3:])
    assert r.status_code == 400 and r.json() == {"code": "invalid_json",
                                                 "message": "[4321].price: NaN is not JSON"}
    r = _post(api, b'{"shop": "a", "n": 1e999}')
    assert r.status_code == 400 and r.json()["message"] == "n: number 1e999 is out of range for a float"
    assert batcher.counters().get("events_in:h@v1", 0) == 0


def test_serve_says_where_it_listens_and_the_cli_its_version(server: Server) -> None:
    """serve_started named the namespace and auth, never the address, even with -v."""
    from click.testing import CliRunner

    from distbatch.cli import main as cli

    wait_for(lambda: "serve_started" in server.log.read_text(), 10, "the start line")
    assert f"listening on http://127.0.0.1:{server.port}" in server.log.read_text()
    version = CliRunner().invoke(cli, ["--version"])
    assert version.exit_code == 0 and version.output.split()[-1][0].isdigit()


def test_an_unknown_query_parameter_is_refused_before_anything_is_stored(api: httpx.Client,
                                                                         batcher: Batcher) -> None:
    """`?reslts=cuts` (a typo) answered every result, as if nothing had been asked."""
    r = api.post("/v1/sources/orders%2Fcreated/events?reslts=cuts", json={"shop": "a"})
    assert r.status_code == 400 and r.json()["code"] == "query_invalid" and "reslts" in r.json()["message"]
    assert batcher.counters().get("events_in:h@v1", 0) == 0


def test_the_dashboards_data_fails_as_json_naming_what_went_wrong(api: httpx.Client,
                                                                  batcher: Batcher) -> None:
    """A key of the wrong type, a member that is no UTF-8: /api/overview and /metrics answered a
    bare text 500, where every other error of serve's is JSON with a code."""
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "1h"})
    batcher.emit("s", {"n": 1})
    batcher.client.sadd(batcher.keys.open_buffers("d@v1"), b"d@v1|=\xff\xfe")  # top_buffers decoded it
    batcher.client.zadd(batcher.keys.deadlines, {b"d@v1|=\xff\xfe": 1})
    assert api.get("/api/overview").status_code == 200
    batcher.client.delete(batcher.keys.stats)
    batcher.client.set(batcher.keys.stats, "x")
    for path in ("/api/overview", "/metrics"):
        r = api.get(path)
        assert r.status_code == 500 and r.headers["content-type"].startswith("application/json"), r.text
        assert r.json()["code"] == "redis_refused"
        assert f"{batcher.keys.stats} (a string; distbatch keeps a hash there)" in r.json()["message"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_graceful_stop_of_serve_exits_0(redis_server: RedisServer, tmp_path: Path, namespace: str,
                                          sig: signal.Signals) -> None:
    """Ctrl-C printed click's "Aborted!" and exit status 1, the status of a mistake; SIGTERM died
    by the signal. Both stop gracefully (requests in flight finish), then exit 0, as a worker."""
    server = Server(redis_server.url, tmp_path, namespace)
    server.proc.send_signal(sig)
    assert server.proc.wait(15) == 0, server.log.read_text()
    assert "Aborted" not in server.log.read_text()


def test_serve_refuses_a_queue_url_it_cannot_log_into(redis_server: RedisServer, namespace: str) -> None:
    """worker and sweeper refused it; serve started, acknowledged events and failed every hand-off."""
    locked = RedisServer().start()
    redis.Redis.from_url(locked.url).config_set("requirepass", "right-password")
    try:
        out = subprocess.run([sys.executable, "-m", "distbatch.cli", "serve", "--redis-url", redis_server.url,
                              "--namespace", namespace, "--port", str(free_port()),
                              "--queue-url", locked.url.replace("redis://", "redis://:wrong@")],
                             env={**env_with_path(), "DISTBATCH_API_TOKENS": TOKEN}, capture_output=True,
                             text=True, timeout=30)
    finally:
        locked.cleanup()
    assert out.returncode == 1 and "--queue-url" in out.stderr and "wrong" not in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_healthz_with_the_queues_redis_away_says_so_and_is_not_down(redis_server: RedisServer,
                                                                    tmp_path: Path, namespace: str) -> None:
    """No worker heartbeat yet and the queue's own Redis away: /healthz said 503 "down", the
    namespace's Redis (fine) blamed with the queue's connection error."""
    queue = RedisServer().start()
    queue_url = queue.url
    queue.cleanup()  # away
    server = Server(redis_server.url, tmp_path, namespace, "--queue-url", queue_url)
    try:
        r = httpx.get(f"{server.url}/healthz", timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "degraded" and body["redis"]["ok"] is True
        assert any("--queue-url" in w for w in body["warnings"]), body
    finally:
        server.stop()


def test_stats_metrics_and_healthz_count_the_same_live_sweepers(redis_server: RedisServer, tmp_path: Path,
                                                                  namespace: str) -> None:
    """`stats` and `/metrics` counted a sweeper live for 10 s after its last heartbeat, `/healthz`
    for 30 s: for 20 s after a sweeper stopped, one said none and the other one (the style
    review). One window now (`keys.SEEN_LIVE_MS`)."""
    from distbatch.stats import collect

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("x", version="v1", source="x", handler="m.h", batch={"count": 100, "window": "1h"})
    b.client.zadd(b.keys.sweepers, {"gone-a-while": b.server_ms() - 20_000})
    s = Server(redis_server.url, tmp_path, namespace)
    try:
        health = httpx.get(f"{s.url}/healthz").json()
        metrics = httpx.get(f"{s.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    finally:
        s.stop()
    assert health["sweepers"] == collect(b)["sweepers_live"] == 1, health
    assert "distbatch_sweepers_live 1.0" in metrics
