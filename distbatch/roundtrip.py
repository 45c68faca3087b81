"""Commands sent straight on a redis-py connection: pack, send, read the replies.

redis-py's per-command path (`execute_command`, and `Pipeline.execute`) adds option parsing,
response callbacks, timing for its own observability hooks and, in its hiredis packer, a Python
loop over every argument: on this machine ~27 µs of client CPU per single-event emit, a third of
all of it. What matters of it is kept: the connection's retry policy and health check, and the
client's lock for a single-connection client. The connection's own send and read keep their
error handling: on any failure they close the socket, so no reply is ever read out of turn; a
reply that is an error comes back as its exception (NOSCRIPT, MOVED ... keep their redis-py
classes).

Used for sync `redis.Redis` clients (fakeredis included); other clients (Redis Cluster, asyncio)
keep redis-py's own path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import ResponseError

from .sent import MaybeRan, after_resend, refused


def _optional_hiredis_pack() -> Any:
    """hiredis is optional (the `fast` extra): its packer, or None."""
    try:
        return importlib.import_module("hiredis").pack_command
    except ImportError:
        return None


_hiredis_pack: Any = _optional_hiredis_pack()
_HiredisSerializer: Any = getattr(redis.connection, "HiredisRespSerializer", None)

Argv = Sequence[Any]

def supported(client: Any) -> bool:
    """A sync client whose connections this module can drive."""
    return isinstance(client, redis.Redis)


def _packed(conn: Any, commands: Sequence[Argv]) -> list[bytes]:
    if _hiredis_pack is not None and _HiredisSerializer is not None and \
            isinstance(getattr(conn, "_command_packer", None), _HiredisSerializer):
        try:  # what redis-py's hiredis serializer does, less its per-argument Python loop; one
            # buffer, so a pipeline is one send system call (each item of the list is one)
            if len(commands) == 1:
                return [_hiredis_pack(tuple(commands[0]))]
            return [b"".join([_hiredis_pack(tuple(argv)) for argv in commands])]
        except TypeError:
            pass  # a bytearray or memoryview argument: redis-py's packer converts it
    return list(conn.pack_commands(commands))


def execute(client: redis.Redis, commands: Sequence[Argv]) -> list[Any]:
    """Every command's reply, in order, in one round trip; an error reply is its exception.
    A connection error is raised, with the socket closed (nothing read out of turn)."""
    return _on_connection(client, lambda conn: _exchange(conn, _packed(conn, commands), len(commands)))


def execute_one(client: redis.Redis, argv: Argv) -> Any:
    """One command's reply; an error reply is raised."""
    return _raised(execute(client, (argv,))[0])


def execute_packed(client: redis.Redis, packed: bytes) -> Any:
    """`execute_one` for one command the caller packed (RESP) itself."""
    return _raised(_on_connection(client, lambda conn: _exchange(conn, [packed], 1))[0])


def _raised(reply: Any) -> Any:
    if isinstance(reply, ResponseError):
        raise reply
    return reply


def _on_connection(client: redis.Redis, exchange: Callable[[Any], list[Any]]) -> list[Any]:
    conn = client.connection
    if conn is not None:  # a single-connection client (each emitting thread has its own)
        with client.single_connection_lock:  # a user's client may be shared by threads
            return exchange(conn)
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        return exchange(conn)
    finally:
        pool.release(conn)


def _exchange(conn: Any, packed: list[bytes], n: int) -> list[Any]:
    """One round trip under the connection's own retry policy, as redis-py runs a command: a
    connection error closes the socket and the round trip is tried again after the policy's
    backoff (redis-py 8's default: 10 retries, 10 ms to 1 s apart), so a short outage or a
    restart is ridden out. Resending is safe: every distbatch script is idempotent per call id
    or token. A last error that says the call never left (refused) speaks only for the last
    attempt: if an earlier one failed after sending, it is raised as `MaybeRan`."""
    reached: list[bool] = []

    def failed(error: BaseException) -> None:
        reached.append(not refused(error))
        conn.disconnect()

    try:
        replies: list[Any] = conn.retry.call_with_retry(lambda: _round_trip(conn, packed, n), failed)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        if any(reached[:-1]) and refused(exc):
            raise MaybeRan(f"{exc}; an earlier attempt of the retry policy may have run") from exc
        raise
    if any(reached):  # an attempt before the last may have run: a refusal to write says nothing of it
        replies = [after_resend(r) for r in replies]
    return replies


def _round_trip(conn: Any, packed: list[bytes], n: int) -> list[Any]:
    replies: list[Any] = []
    try:  # the send too: an exception between it and the reads (a handler's timeout) would leave
        conn.send_packed_command(packed)  # the replies unread; with the client's health check
        for _ in range(n):
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        conn.disconnect()  # replies may be left unread: this socket must never be read again
        raise
    return replies
