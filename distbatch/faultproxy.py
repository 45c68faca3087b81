"""A loopback TCP proxy in front of a redis-server, for fault-injection tests.

    with FaultProxy("127.0.0.1", server.port).start() as proxy:
        client = redis.Redis.from_url(proxy.url)
        proxy.drop_next_reply(b"EVALSHA")
        client.evalsha(...)   # Redis runs it, the client sees the connection close instead of the reply

Every accepted client connection gets its own connection to the target and two daemon pump threads
(client->server, server->client).  A *drop* forwards the request in full, waits for the reply, reads it
into the void (until a short quiet period passes) and then shuts down both sockets without sending it:
the command ran, but the client only sees EOF.  Meant for request/response clients; with pipelining the
replies to earlier commands still in flight on that connection are lost as well.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType

__all__ = ["FaultProxy"]

_CHUNK = 65536
_TAIL = 256  # bytes of a connection's previous request data kept to find a match split across reads


class _Connection:
    """One proxied client connection and its server connection."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.swallow = threading.Event()  # the next reply from the server is to be dropped
        self.tail = b""  # the end of the request data forwarded so far
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shut = False
        self._pumps_left = 2
        self._closed = False

    def shutdown(self) -> None:
        """Wake both pumps; the sockets are closed once neither pump uses them any more."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def pump_done(self) -> None:
        self.shutdown()
        with self._lock:
            self._pumps_left -= 1
            last = self._pumps_left == 0
        if last:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """A thread-based TCP proxy on 127.0.0.1 that can drop replies and cut connections on demand."""

    def __init__(self, target_host: str, target_port: int, *, quiet: float = 0.05) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.quiet = quiet  # seconds without further reply bytes after which a dropped reply is complete
        self.port = 0
        self.fired = 0  # how many replies were dropped (connections cut)
        self.fired_event = threading.Event()
        self._lock = threading.Lock()
        self._armed = 0  # replies still to drop
        self._match: bytes | None = None
        self._drop_all = False
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: list[_Connection] = []

    # -- lifecycle --------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FaultProxy:
        if self._listener is not None:
            raise RuntimeError("FaultProxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.1)  # so the accept loop notices close()
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, cut every connection and join the threads (each join bounded by timeout)."""
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            conn.shutdown()
        for conn in connections:
            for thread in conn.threads:
                thread.join(timeout)
            conn.close()

    def __enter__(self) -> FaultProxy:
        if self._listener is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults -----------------------------------------------------------------------------------------

    def drop_next_reply(self, match: bytes | None = None, times: int = 1) -> None:
        """Arm a one-shot drop (for the next `times` requests): the next request (containing
        ``match``, if given) is forwarded, its reply is read and discarded, and that client
        connection and its server connection are closed."""
        with self._lock:
            self._armed = times
            self._match = match

    def disarm(self) -> None:
        with self._lock:
            self._armed = 0
            self._match = None

    def drop_all(self, on: bool) -> None:
        """While on, every request on any connection has its reply dropped and its connection cut."""
        with self._lock:
            self._drop_all = on

    def stop_listening(self) -> None:
        """Refuse new connections from now on (as a Redis that went down does); the connections
        open keep working until a fault cuts them."""
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(2.0)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._armed > 0

    def _should_drop(self, conn: _Connection, chunk: bytes) -> bool:
        """Decide (and consume the one-shot arm) for a request chunk about to be forwarded."""
        with self._lock:
            if self._drop_all:
                return True
            if not self._armed:
                return False
            match = self._match
            if match is not None:
                keep = len(match) - 1
                seen = (conn.tail[-keep:] if keep > 0 else b"") + chunk
                if match not in seen:
                    return False
            self._armed -= 1
            if not self._armed:
                self._match = None
            return True

    # -- threads ----------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection((self.target_host, self.target_port), timeout=5)
            except OSError:
                with contextlib.suppress(OSError):
                    client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(client, server)
            conn.threads = [
                threading.Thread(target=self._client_to_server, args=(conn,), daemon=True,
                                 name=f"faultproxy-c2s-{self.port}"),
                threading.Thread(target=self._server_to_client, args=(conn,), daemon=True,
                                 name=f"faultproxy-s2c-{self.port}"),
            ]
            with self._lock:
                if self._stop.is_set():
                    conn.shutdown()
                    conn.close()
                    return
                self._connections = [c for c in self._connections if any(t.is_alive() for t in c.threads)]
                self._connections.append(conn)
            for thread in conn.threads:
                thread.start()

    def _client_to_server(self, conn: _Connection) -> None:
        try:
            while True:
                chunk = conn.client.recv(_CHUNK)
                if not chunk:
                    return
                if not conn.swallow.is_set() and self._should_drop(conn, chunk):
                    conn.swallow.set()  # before forwarding, so the reply cannot overtake the flag
                conn.tail = (conn.tail + chunk)[-_TAIL:]
                conn.server.sendall(chunk)
        except OSError:
            return
        finally:
            conn.pump_done()

    def _server_to_client(self, conn: _Connection) -> None:
        try:
            while True:
                data = conn.server.recv(_CHUNK)
                if not data:
                    return
                if conn.swallow.is_set():
                    self._discard_rest(conn.server)
                    # counted before the cut: the cut is what the client sees, and it may resend,
                    # return and read `fired` before this thread runs again (a loaded machine)
                    with self._lock:
                        self.fired += 1
                    self.fired_event.set()
                    conn.shutdown()
                    return
                conn.client.sendall(data)
        except OSError:
            return
        finally:
            conn.pump_done()

    def _discard_rest(self, server: socket.socket) -> None:
        """Read reply bytes into the void until ``quiet`` seconds pass without any (or EOF)."""
        while True:
            ready, _, _ = select.select([server], [], [], self.quiet)
            if not ready:
                return
            if not server.recv(_CHUNK):
                return
