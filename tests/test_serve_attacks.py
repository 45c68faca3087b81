# ruff: noqa: F811  # (the fixture imported below is the tests' parameter)
"""`distbatch serve` under an attacker and a demanding client (found by a review of the HTTP side;
each test failed before its fix): a connection answered before its body was read, the connection
cap's refusal, a repeated query parameter, JSON type names, the OpenAPI document, the size of a
kept Idempotency-Key response. Own redis-server and serve processes on loopback ports."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from distbatch import Batcher
from distbatch.testing import RedisServer, env_with_path

from .test_serve import TOKEN, Server, api  # noqa: F401  (api: the fixture, on this module's server)

SOURCE = "orders/created"


@pytest.fixture
def own_batcher(redis_server: RedisServer, namespace: str) -> Batcher:
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("h", version="v1", source=SOURCE, handler="tests.handlers.record",
               batch={"count": 3, "window": "1h", "key": "shop"})
    return b


@pytest.fixture
def server(redis_server: RedisServer, own_batcher: Batcher, namespace: str,
           tmp_path: Path) -> Iterator[Server]:
    """serve with short head and body timeouts (`api` takes it)."""
    s = Server(redis_server.url, tmp_path, namespace, "--header-timeout", "1s", "--body-timeout", "2s")
    yield s
    s.stop()


def _held_open(sock: socket.socket, seconds: float) -> bool:
    """Whether the server keeps `sock` open (sends nothing, closes nothing) for `seconds`."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return True
    except OSError:  # reset by the server: closed
        return False
    return bool(data) and _held_open(sock, seconds)  # b"" = closed


# --- 1. A client WITHOUT a token holds a connection for ever (and 999 of them shut serve out) ---

def test_unauthenticated_body_after_401_holds_connection_forever(server: Server) -> None:
    """README: a head must arrive within --header-timeout, a body within --body-timeout, "a client
    stalled mid-body holds no connection ... for ever". A client with no token declares a body,
    gets its 401 (the body is never read), sends one more byte and goes quiet: no timer is left
    (head timer disarmed, body timer never started, uvicorn's keep-alive timer cancelled by the
    byte). With --header-timeout 1s, --body-timeout 2s and uvicorn's 5 s keep-alive the server
    should have closed it within ~8 s; it is still open after 12 s. 999 such sockets make every
    request (ingest and /healthz) a 503 for as long as the attacker likes."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(b"POST /v1/sources/orders%2Fcreated/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 401")
        time.sleep(0.3)
        sock.sendall(b"x")  # one byte of the declared body, then nothing
        assert not _held_open(sock, 12), "a client with no token holds this connection indefinitely"
    finally:
        sock.close()


def test_early_refusal_with_token_leaves_body_unbounded_too(server: Server) -> None:
    """Same root cause with a token: a request refused before its body is read (here 400
    results_invalid; also 413 on a declared Content-Length above the limit) leaves the rest of
    the declared body with no --body-timeout."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(b"POST /v1/sources/orders%2Fcreated/events?results=bogus HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
        time.sleep(0.3)
        sock.sendall(b"[")
        assert not _held_open(sock, 12), "the body of a refused request has no timeout"
    finally:
        sock.close()


# --- 2. Over the connection cap: a text/plain 503 with no code -------------------------------

def test_connection_cap_503_is_json_with_a_code(server: Server) -> None:
    """README, Errors: "Errors are JSON {"code", "message", ...} with a stable code: ... above
    1,000 connections at once, 503." The 503 is uvicorn's `text/plain` "Service Unavailable".
    (1,000 idle loopback sockets for a few seconds; --header-timeout is 1 s so open them fast.)"""
    socks: list[socket.socket] = []
    try:
        for _ in range(1000):
            socks.append(socket.create_connection(("127.0.0.1", server.port)))
        r = httpx.post(f"{server.url}/v1/sources/orders%2Fcreated/events", json={"shop": "a"},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    finally:
        for s in socks:
            s.close()
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/json"), (r.headers["content-type"], r.text)
    assert "code" in r.json()


# --- 3. ?results=<invalid>&results=cuts is taken --------------------------------------------

def test_a_repeated_results_parameter_with_a_bad_value_is_refused(
        api: httpx.Client, own_batcher: Batcher) -> None:
    """`results` is checked on its last value only (Starlette's query_params.get): a bad value
    before a good one is stored and answered 200, though "an unknown results mode is refused
    before anything is read or stored"."""
    r = api.post("/v1/sources/orders%2Fcreated/events", json={"shop": "a"},
                    params=[("results", "everything"), ("results", "cuts")])
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "results_invalid"
    assert own_batcher.counters().get("events_in:h@v1", 0) == 0


# --- 4. payload_type names Python types, not JSON ones --------------------------------------

@pytest.mark.parametrize(("body", "json_type", "python_name"), [
    (b"[null]", "null", "NoneType"), (b"[[1]]", "array", "list"), (b'["x"]', "string", "str"),
    (b"[1.5]", "number", "float"), (b"[true]", "boolean", "bool")])
def test_payload_type_message_names_the_json_type(
        api: httpx.Client, body: bytes, json_type: str, python_name: str) -> None:
    """"event 0 is a JSON NoneType, not an object": an HTTP client in any language is told a
    Python type name (NoneType, list, str, float, bool) where JSON's (null, array, string,
    number, boolean) is meant."""
    r = api.post("/v1/sources/orders%2Fcreated/events", content=body,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "payload_type"
    assert python_name not in r.json()["message"].split(), r.json()["message"]
    assert json_type in r.json()["message"], r.json()["message"]


def test_an_ndjson_event_refused_is_named_by_its_line_too(api: httpx.Client) -> None:
    """An NDJSON event refused after parsing (`payload_type`, `payload_unencodable`) was named by
    its index alone, which blank lines (skipped) set apart from its line: a client reading its
    file was sent to the wrong line. Now `line` comes with `event`, as for `invalid_json`."""
    body = b'\n{"shop": "a"}\n\n\n[1]\n'
    r = api.post("/v1/sources/orders%2Fcreated/events", content=body,
                 headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 422 and r.json()["code"] == "payload_type", r.text
    assert (r.json()["event"], r.json()["line"]) == (1, 5) and "line 5" in r.json()["message"], r.text
    big = b'{"shop": "a"}\n\n{"shop": "b", "n": 99999999999999999999999}\n'
    r = api.post("/v1/sources/orders%2Fcreated/events", content=big,
                 headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 422 and r.json()["code"] == "payload_unencodable", r.text
    assert (r.json()["event"], r.json()["line"]) == (1, 3) and "line 3" in r.json()["message"], r.text


# --- 5. The OpenAPI document omits statuses the README promises for ingest -------------------

def test_openapi_lists_every_documented_ingest_status(api: httpx.Client) -> None:
    """README lists for POST /v1/sources/<source>/events: 431 head_too_large (real, seen below)
    and 500 internal_error (an answer an Idempotency-Key replays); the OpenAPI document has
    neither (nor 405, 403 not_local, the /metrics and /api/... routes)."""
    big = api.post("/v1/sources/orders%2Fcreated/events", json={"shop": "a"},
                       headers={"X-Pad": "a" * 70_000})
    assert big.status_code == 431
    paths = api.get("/openapi.json").json()["paths"]
    responses = paths["/v1/sources/{source}/events"]["post"]["responses"]
    missing = [s for s in ("403", "405", "431", "500") if s not in responses]
    assert "/metrics" in paths and "/api/overview" in paths
    assert not missing, f"statuses the server answers but the document omits: {missing}"


# --- 6. Idempotency records cost ~7x the request, for a day ---------------------------------

def test_an_idempotent_request_does_not_keep_more_than_it_sent(
        api: httpx.Client, redis_server: RedisServer, namespace: str) -> None:
    """A client that sends every request with an Idempotency-Key (as README advises for retries)
    leaves, per 1,000-event request of 14 KB, a ~98 KB record in Redis for 24 h (the whole
    per-event result list). At README's 26,800 events/s in 1,000-event arrays that is ~230 GB
    held at once, with `maxmemory-policy noeviction` as advised: ingest then fails (OOM). A token
    holder gets ~7x (30x with `{}` events) amplification of Redis memory per byte sent."""
    body = json.dumps([{"shop": f"s{i % 50}"} for i in range(1000)]).encode()
    key = uuid.uuid4().hex
    r = api.post("/v1/sources/orders%2Fcreated/events", content=body,
                    headers={"Content-Type": "application/json", "Idempotency-Key": key})
    assert r.status_code == 200
    client = redis.Redis(port=redis_server.port)
    keys = list(client.scan_iter(f"{{{namespace}}}:request:*"))
    assert len(keys) == 1
    kept = client.memory_usage(keys[0])
    assert kept is not None and kept <= len(body), (
        f"replay record of {kept} bytes kept {client.pttl(keys[0]) // 3_600_000} h for a "
        f"{len(body)}-byte request")
    again = api.post("/v1/sources/orders%2Fcreated/events", content=body,
                         headers={"Content-Type": "application/json", "Idempotency-Key": key})
    assert again.headers.get("idempotent-replayed") == "true" and again.content == r.content


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Reads (and drops) what comes until the server closes `sock`; False if open after `seconds`."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def _read_response(sock: socket.socket, timeout: float = 5) -> bytes:
    """One response with a content-length, head and body."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = next((int(v) for n, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                   if n.strip().lower() == b"content-length"), 0)
    while len(rest) < length and (chunk := sock.recv(65536)):
        rest += chunk
    return head + b"\r\n\r\n" + rest


EVENTS = b"/v1/sources/orders%2Fcreated/events"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_connection_answered_before_its_body_is_closed_when_idle_after_the_body(
        server: Server, framing: str) -> None:
    """A 401 before the body was read; the client sends the body it declared at once, then
    nothing: its bytes had cancelled uvicorn's keep-alive timer and the body's end the body
    timer, so no timer was left and the connection was held for ever (found by the third
    review)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        body = b'{"shop": "a"}'
        head, wire = ((b"Content-Length: %d\r\n" % len(body), body) if framing == "content-length" else
                      (b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)))
        sock.sendall(b"POST " + EVENTS + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + head + b"\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 401")
        time.sleep(0.3)
        sock.sendall(wire)
        assert _closed_within(sock, 12), "an idle connection is still held 12 s after its body ended"
    finally:
        sock.close()


def test_a_pipelined_request_whose_body_is_late_gets_its_408_body_timeout(server: Server) -> None:
    """GET /healthz pipelined with a POST whose body stalls: the answer to /healthz armed the
    body timer for the POST (the request parsed last), which closed the connection before the
    POST's own 408 `body_timeout` (found by the third review)."""
    post = (b"POST " + EVENTS + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[")
    piped = socket.create_connection(("127.0.0.1", server.port))
    try:
        piped.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + post)
        assert _read_response(piped).startswith(b"HTTP/1.1 ")
        second = _read_response(piped, 8)
        assert second.startswith(b"HTTP/1.1 408") and b"body_timeout" in second, second
    finally:
        piped.close()


def test_a_kept_response_record_is_refused_by_a_serve_of_the_version_before(namespace: str) -> None:
    """A kept response is compressed; its status field says so, where a serve of the version
    before reads a number: that one fails the request (500, and the client sends again)
    instead of replaying the zlib bytes as the response (found by the third review). A record
    of the version before (not compressed) still replays."""
    import asyncio

    import fakeredis
    from starlette.responses import Response

    from distbatch.serve import idempotency

    body = json.dumps({"events": 1, "results": []}).encode()

    async def main() -> tuple[bytes, object, object]:
        client = fakeredis.FakeAsyncRedis()
        slot = await idempotency.take(client, namespace, "key-1", b"req", b"body")
        assert isinstance(slot, idempotency.Slot)
        await idempotency.settle(client, slot, Response(body, 200, media_type="application/json"), True)
        record = await client.get(slot.key)
        replayed = await idempotency.take(client, namespace, "key-1", b"req", b"body")
        before = await idempotency.take(client, namespace, "key-2", b"req", b"body")
        assert isinstance(before, idempotency.Slot)
        await client.set(before.key, b"done " + before.digest + b" 200 " + body)  # as it was written
        return record, replayed, await idempotency.take(client, namespace, "key-2", b"req", b"body")

    record, replayed, old = asyncio.run(main())
    status = record.split(b" ")[2]
    assert not status.isdigit(), record[:40]  # the version before: int(status) raises, a 500
    for got in (replayed, old):
        assert isinstance(got, Response) and got.body == body and got.status_code == 200


@pytest.mark.parametrize("name", ["Authorization", "Idempotency-Key", "Content-Type", "Host"])
def test_a_header_given_twice_is_refused_and_nothing_is_stored(server: Server, own_batcher: Batcher,
                                                               name: str) -> None:
    """A header that a request carries once, given twice, was read as the last one (auth, via a
    dict) or the first (starlette's `headers.get`): a proxy in front that checked the other
    copy (one token, one Idempotency-Key) let the request act on one it never saw. Refused with
    400 `header_repeated`, naming the header; nothing stored."""
    good = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": f"k-{uuid.uuid4()}",
            "Content-Type": "application/json", "Host": f"127.0.0.1:{server.port}"}
    second = {"Authorization": "Bearer someone-elses-token-0123456789", "Idempotency-Key": "other-key",
              "Content-Type": "application/x-ndjson", "Host": "127.0.0.1"}

    def post(head: list[tuple[str, str]], body: bytes) -> tuple[int, dict[str, str]]:
        """Raw: httpx refuses to send a second Host."""
        lines = "".join(f"{k}: {v}\r\n" for k, v in head)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"POST /v1/sources/{SOURCE}/events HTTP/1.1\r\n{lines}Content-Length: "
                         f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            answer = _read_response(sock)
        status = int(answer.split(b" ", 2)[1])
        return status, json.loads(answer.partition(b"\r\n\r\n")[2])

    status, body = post([*good.items(), (name, second[name])], b'{"shop": "a"}')
    assert status == 400 and body["code"] == "header_repeated", body
    assert name.lower() in body["message"], body
    status, body = post(list(good.items()), b'{"shop": "b"}')
    assert status == 200 and body["events"] == 1, body  # one copy of each: served
    from distbatch.stats import collect

    stats = collect(own_batcher)["bindings"]["h@v1"]
    assert stats["events_in_total"] == 1, stats  # the refused one stored nothing


def test_how_long_an_idempotency_key_is_kept_is_an_option(redis_server: RedisServer, own_batcher: Batcher,
                                                          namespace: str, tmp_path: Path) -> None:
    """A kept response held Redis for a day, fixed: at 1,000 keyed requests a second that is tens
    of GB (the growth review's sizing), with no way to shorten it. `--idempotency-keep` sets it;
    a retry within it replays, and a bad value is refused by name."""
    s = Server(redis_server.url, tmp_path, namespace, "--idempotency-keep", "90s")
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "keep-1"}
        first = httpx.post(f"{s.url}/v1/sources/{SOURCE}/events", json={"shop": "a"}, headers=headers)
        again = httpx.post(f"{s.url}/v1/sources/{SOURCE}/events", json={"shop": "a"}, headers=headers)
    finally:
        s.stop()
    assert first.status_code == 200 and again.headers.get("idempotent-replayed") == "true", again.headers
    client = redis.Redis.from_url(redis_server.url)
    (key,) = client.keys(f"{{{namespace}}}:request:*")
    assert 80_000 < client.pttl(key) <= 90_000, client.pttl(key)
    bad = subprocess.run([sys.executable, "-m", "distbatch.cli", "serve", "--redis-url", redis_server.url,
                          "--idempotency-keep", "soon"], capture_output=True, text=True, timeout=60,
                         env={**env_with_path(), "DISTBATCH_API_TOKENS": TOKEN})
    assert bad.returncode == 2 and "--idempotency-keep" in bad.stderr, bad.stderr


def test_above_a_thousand_connections_a_request_gets_a_json_503(
        redis_server: RedisServer, own_batcher: Batcher, namespace: str, tmp_path: Path) -> None:
    """README: above 1,000 connections or requests at once, 503 `too_many_connections` (nothing
    read; the connection closed); once they go, requests are served again."""
    s = Server(redis_server.url, tmp_path, namespace, "--header-timeout", "60s")
    held: list[socket.socket] = []
    try:
        for _ in range(1000):
            held.append(socket.create_connection(("127.0.0.1", s.port), timeout=10))
        time.sleep(0.5)  # all accepted
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as extra:
            extra.sendall(f"POST /v1/sources/{SOURCE}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                          "Content-Length: 13\r\n\r\n{\"shop\": \"a\"}".encode())
            answer = _read_response(extra, 10)
        assert answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer, answer[:300]
        assert b"application/json" in answer.lower()
        for sock in held:
            sock.close()
        held.clear()
        deadline = time.monotonic() + 10  # the server sees the closes as its loop gets to them
        while True:
            served = httpx.post(f"{s.url}/v1/sources/{SOURCE}/events", json={"shop": "b"},
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            if served.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert served.status_code == 200, served.text
    finally:
        for sock in held:
            sock.close()
        s.stop()
    from distbatch.stats import collect

    assert collect(own_batcher)["bindings"]["h@v1"]["events_in_total"] == 1  # the refused one: nothing
