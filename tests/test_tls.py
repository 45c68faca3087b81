"""`rediss://` URLs, against a redis-server of its own serving TLS with a certificate made here:
the library, the CLI and a worker take the URL's TLS options as redis-py reads them; and `serve`
speaks HTTPS with a certificate of its own."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from distbatch import Batcher
from distbatch.cli import main as cli

from .redis_server import RedisServer, env_with_path, free_port


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(TLS port, the certificate that signs it)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    server = RedisServer("--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no").start()
    yield port, cert
    server.cleanup()


def test_a_rediss_url_with_its_ca_stores_and_cuts(tls: tuple[int, Path], namespace: str) -> None:
    port, cert = tls
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    b = Batcher.from_url(url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h"})
    b.emit("s", {"n": 1})
    (r,) = b.emit("s", {"n": 2})
    assert r.batch is not None and [e.payload for e in r.batch.events] == [{"n": 1}, {"n": 2}]
    result = CliRunner().invoke(cli, ["stats", "--json", "--redis-url", url, "--namespace", namespace])
    assert result.exit_code == 0, result.output


def test_a_worker_whose_server_certificate_is_not_trusted_stops_with_one_line(tls: tuple[int, Path]) -> None:
    """It took the failed verification for an outage and retried for ever, one warning a try."""
    port, _ = tls
    try:
        done = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--redis-url",
                               f"rediss://127.0.0.1:{port}/0", "--handlers", "tests.handlers"],
                              env=env_with_path(), capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the worker kept retrying: {exc.stderr!r}") from None
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "certificate verify failed" in last, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("mistake", ["key_not_the_certificates", "missing_ca_file"])
def test_a_worker_with_a_tls_mistake_of_its_own_stops_with_one_line(tls: tuple[int, Path], tmp_path: Path,
                                                                    mistake: str) -> None:
    """A client key that is not its certificate's, a CA file that is not there: taken for an outage
    ("Error 2 connecting ...: No such file or directory", naming no file), retried for ever."""
    port, cert = tls
    if mistake == "missing_ca_file":
        url, said = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path}/ca.pem", "does not exist"
    else:
        other = tmp_path / "other.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(other), "2048"], check=True, capture_output=True)
        url = (f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_certfile={cert}"
               f"&ssl_keyfile={other}")
        said = "KEY_VALUES_MISMATCH"
    try:
        done = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--redis-url", url,
                               "--handlers", "tests.handlers"],
                              env=env_with_path(), capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the worker kept retrying: {exc.stderr!r}") from None
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and said in last, done.stderr


def test_serve_over_https_with_its_certificate(tls: tuple[int, Path], redis_server: RedisServer,
                                               namespace: str, tmp_path: Path) -> None:
    """`serve` spoke plain HTTP only: bearer tokens and events crossed the network in clear
    wherever it listened beyond loopback. With --tls-cert/--tls-key it speaks HTTPS (plain HTTP
    is refused); a key that is not the certificate's is one `Error:` line; off loopback without
    TLS it says so."""
    import ssl

    import httpx

    _, cert = tls
    trusted = ssl.create_default_context(cafile=str(cert))
    key = cert.with_name("key.pem")
    Batcher.from_url(redis_server.url, namespace=namespace, handoff=False).register(
        "h", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "1h"})
    port = free_port()
    token = "a-token-for-the-https-test-0123"
    env = {**env_with_path(), "DISTBATCH_API_TOKENS": token}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:  # the child keeps its own
        p = subprocess.Popen([sys.executable, "-m", "distbatch.cli", "serve", "--redis-url", redis_server.url,
                              "--namespace", namespace, "--port", str(port), "--tls-cert", str(cert),
                              "--tls-key", str(key)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.post(f"https://127.0.0.1:{port}/v1/sources/s/events", json={"n": 1},
                               headers={"Authorization": f"Bearer {token}"}, verify=trusted, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and p.poll() is None, log.read_text()
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["events"] == 1, r.text
        with pytest.raises(httpx.TransportError):  # plain HTTP on the HTTPS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        p.terminate()
        p.wait(15)
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(other), "2048"], check=True, capture_output=True)
    bad = CliRunner().invoke(cli, ["serve", "--redis-url", redis_server.url, "--port", str(free_port()),
                                   "--tls-cert", str(cert), "--tls-key", str(other)],
                             env={"DISTBATCH_API_TOKENS": token})
    assert bad.exit_code == 1 and "--tls-cert=" in bad.output and "Traceback" not in bad.output, bad.output
    half = CliRunner().invoke(cli, ["serve", "--tls-cert", str(cert)], env={"DISTBATCH_API_TOKENS": token})
    assert half.exit_code == 2 and "go together" in half.output, half.output


def test_a_tls_handshake_never_begun_is_bounded_by_the_header_timeout(
        tls: tuple[int, Path], redis_server: RedisServer, namespace: str, tmp_path: Path) -> None:
    """uvicorn passes no handshake timeout: a connection that never began its TLS handshake was
    held for asyncio's 60 s, before the head timer (which starts after the handshake) could run;
    a client with no token held sockets and SSL state a minute each. Now --header-timeout bounds
    the handshake as it bounds a plain connection's first request; a handshake done in time
    still serves."""
    import socket
    import ssl

    import httpx

    _, cert = tls
    port = free_port()
    token = "a-token-for-the-https-test-0123"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "distbatch.cli", "serve", "--redis-url", redis_server.url,
                              "--namespace", namespace, "--port", str(port), "--tls-cert", str(cert),
                              "--tls-key", str(cert.with_name("key.pem")), "--header-timeout", "1s"],
                             env={**env_with_path(), "DISTBATCH_API_TOKENS": token}, stdout=out,
                             stderr=subprocess.STDOUT)
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trusted, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and p.poll() is None, log.read_text()
                time.sleep(0.1)
        idle = socket.create_connection(("127.0.0.1", port), timeout=20)
        began = time.monotonic()
        try:
            closed = idle.recv(1) == b""  # no ClientHello: the server ends it, or recv times out
        except (TimeoutError, ConnectionResetError) as exc:
            closed = isinstance(exc, ConnectionResetError)
        held = time.monotonic() - began
        idle.close()
        assert closed and held < 8, (closed, held)
        served = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trusted, timeout=5)
        assert served.status_code in (200, 503), served.text  # a handshake done in time is served
        p.terminate()
        assert p.wait(15) == 0, log.read_text()  # a SIGTERM stop is still a clean one
    finally:
        p.terminate()
        p.wait(15)
