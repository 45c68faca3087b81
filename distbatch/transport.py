"""Sending one script call per shard, one round trip per Redis node.

On one Redis every emitting thread keeps one connection of the client's pool for itself (a pool
checkout per emit cost 5-15% of a single-event emit) and pipelines the calls of all shards. On
Redis Cluster, `RedisCluster.pipeline()` refuses scripts, so the calls are grouped by the node that
owns each shard's slot and pipelined on that node's own client, the nodes in parallel; a call that
meets a slot on the move (MOVED, ASK, TRYAGAIN) is sent again through the cluster client, which
follows redirects. Sending a call twice is safe: every accumulate call carries a call id the
script recognises.

While a slot moves, Redis runs a multi-key call only where all of its keys are (else ASK, then
TRYAGAIN on the importing node), and every script names keys that are often absent (the dead set,
the bell, a new emitter's call key): such a call is refused until the move ends. redis-py follows
16 redirects (about 0.4 s), then raises `ClusterError("TTL exhausted.")`; moving a slot that holds
thousands of keys takes longer. A refusal ran nothing, so the call is sent again, with backoff, for
up to `SLOT_MOVE_WAIT_S`; after that it fails as `NotSent`, or as `MaybeRan` where redis-py may
have sent it before after a connection error (`sent.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)

from .errors import describe, with_pool_hint
from .onecall import Single
from .registry import Snapshot
from .roundtrip import execute_packed
from .scripts import call, pipelined
from .sent import REFUSED_WRITE, MaybeRan, NotSent, after_resend, hides_retries, never_sent, resend_failed

TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
PASSING = (*TRANSIENT, redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)
"""What a long-running process waits out: Redis away, and Redis refusing writes for a while (out of
memory; demoted to a replica by a failover). Not a mistake no wait mends (a wrong password)."""
OUTAGE = (*TRANSIENT, ClusterDownError, RedisClusterException)
"""Redis, or a cluster's node, away or down: what a step that cannot go on waits out, as raised
where no `patient` turned it into a `ConnectionError` (a plain call on a cluster client)."""
ELSEWHERE = (*TRANSIENT, MovedError, AskError, TryAgainError, ClusterDownError)
"""A call's reply on a cluster node that says the call ran nowhere, or maybe on a node that is gone:
sent again through the cluster client. Any other error (a script that failed part-way: Redis keeps
what it wrote before the error) is the call's outcome, never resent: a resend would meet its call
id and report "ran before", as if it had run to its end."""


def refused_by_acl(exc: BaseException) -> bool:
    """A login or an ACL refusal: a mistake no wait mends (the URL's user lacks a command, a key or
    a channel), to end a long-running process with one clear error instead of a retry for ever.
    A command refused inside a script comes as a plain error that names the script."""
    return (isinstance(exc, (redis.AuthenticationError, redis.exceptions.AuthorizationError,
                             redis.exceptions.NoPermissionError))
            or (isinstance(exc, ResponseError) and "user executing the script can't" in str(exc)))


SLOT_MOVE_WAIT_S = 10.0
"""How long a call waits for a cluster slot on the move to settle."""
Call = tuple[list[Any], list[Any]]  # (keys, args)
T = TypeVar("T")


def slot_moving(exc: BaseException) -> bool:
    """Redis refused the call, having run nothing, because its slot is on the move."""
    return isinstance(exc, TryAgainError) or (type(exc) is ClusterError and "TTL exhausted" in str(exc))


class ClusterAway(MaybeRan):
    """No node of a Redis Cluster answered: redis-py's `RedisClusterException`, which is no
    `ConnectionError`, so it passed every handler of an outage (a raw exception out of `emit`, a
    worker's round, a process's start). The call may have reached a node before it went (redis-py
    raises it also after a call it sent timed out, from a refused reconnect): never taken for
    one that was not sent."""


def _outage(exc: Exception, client: Any) -> Exception | None:
    """A cluster's failure as the outage it is (a `ConnectionError`), or None for any other.
    CLUSTERDOWN ran nothing (unless redis-py sent the call before, on its own retry)."""
    if isinstance(exc, ClusterDownError):
        unsent = not hides_retries(client)
        return (NotSent if unsent else MaybeRan)(f"the cluster is down ({exc}); " + (
            "nothing of the call ran" if unsent else "redis-py may have sent it before"))
    if isinstance(exc, RedisClusterException):
        return ClusterAway(f"no node of the Redis Cluster answered: {exc}")
    return None


def patient(send: Callable[[], T], client: Any, deadline: float | None = None) -> T:
    """`send()` on `client`, sent again with backoff while its slot is on the move, until
    `deadline` (monotonic; default `SLOT_MOVE_WAIT_S` from now): see the module's doc. The
    cluster away or down is raised as a `ConnectionError` (`_outage`)."""
    deadline = time.monotonic() + SLOT_MOVE_WAIT_S if deadline is None else deadline
    delay = 0.05
    while True:
        try:
            return send()
        except (ClusterError, TryAgainError, RedisClusterException) as exc:
            away = _outage(exc, client)
            if away is not None:
                raise away from exc
            wait = _moving_wait(exc, client, deadline, delay)
        time.sleep(wait)
        delay = min(delay * 2, 0.5)


async def apatient(send: Callable[[], Awaitable[T]], client: Any) -> T:
    """`patient` on asyncio."""
    deadline, delay = time.monotonic() + SLOT_MOVE_WAIT_S, 0.05
    while True:
        try:
            return await send()
        except (ClusterError, TryAgainError, RedisClusterException) as exc:
            away = _outage(exc, client)
            if away is not None:
                raise away from exc
            wait = _moving_wait(exc, client, deadline, delay)
        await asyncio.sleep(wait)
        delay = min(delay * 2, 0.5)


def _moving_wait(exc: BaseException, client: Any, deadline: float, delay: float) -> float:
    """How long to wait before sending again; raises when `exc` is no slot on the move or the
    wait is over: `NotSent` (each refusal ran nothing), or `MaybeRan` where redis-py may have
    sent the call before a refusal (a connection error it retried)."""
    if not slot_moving(exc):
        raise exc
    left = deadline - time.monotonic()
    if left <= 0:
        unsent = not hides_retries(client)
        raise (NotSent if unsent else MaybeRan)(
            f"a cluster slot was still on the move after the wait ({exc}); "
            + ("nothing of the call ran" if unsent else "redis-py may have sent it before")) from exc
    return min(delay, left)


CALL_KEY_TTL_S = 600.0
"""How long an emitter's call key outlives its last TTL refresh (`call_once.lua`'s PX 600000)."""


class Emitter:
    """One emitting thread's own client (a single connection), its emitter id, call counter, and
    when its call key's TTL is next due to be set again: a single emit keeps the TTL (`SET ...
    KEEPTTL`, cheaper inside Redis) while the last one set is less than half run out."""

    __slots__ = ("calls", "client", "id", "pid", "singles", "ttl_due")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pid = os.getpid()
        self.id = f"{os.urandom(4).hex()}-{self.pid}-{threading.get_ident()}"
        self.calls = itertools.count(1)
        self.ttl_due = 0.0
        """`time.monotonic()` from which the next call must set the call key's TTL."""
        self.singles: dict[str, tuple[Snapshot, Single | None]] = {}
        """Per source, for the registry snapshot it was made on, what this thread's single emits
        share (`onecall.Single`; None: they take the planned path)."""

    def ttl_set(self, at: float) -> None:
        """A call that set the TTL was answered (it ran): keep it until half of it is gone."""
        self.ttl_due = at + CALL_KEY_TTL_S / 2


class Transport:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    def emitter(self) -> Emitter:
        """This thread's client for the emit path, its emitter id and call counter.

        Keyed by pid, so a forked child never writes to its parent's socket: `os.getpid()` sees
        every fork, also those made in C without CPython's fork hooks (uWSGI's pre-fork).
        """
        em: Emitter | None = getattr(self._local, "em", None)
        if em is None or em.pid != os.getpid():
            try:
                client = self.client if self.cluster else self.client.__class__(
                    connection_pool=self.client.connection_pool, single_connection_client=True)
            except redis.ConnectionError as exc:
                raise with_pool_hint(exc) from exc
            em = self._local.em = Emitter(client)
        # No readiness check per call (a poll syscall, ~5% of a single emit): a socket the server
        # closed (a restart) fails the call, and the call is sent again on a fresh connection —
        # safe, because every accumulate call carries an id the script recognises.
        return em

    def run(self, script: Script, calls: Sequence[Call], client: Any = None) -> list[Any]:
        """Every call's reply, in order; a call that failed twice gives its exception. `client`:
        this thread's emitter client, if the caller has it already."""
        if client is None:
            client = self.emitter().client
        if self.cluster:
            return self._run_cluster(script, calls)
        if len(calls) == 1:
            keys, args = calls[0]
            try:
                return [once_more(script, keys, args, client)]
            except (*TRANSIENT, ResponseError) as exc:  # a script's error: the caller says what
                return [exc]  # may be stored, as for a pipelined call's (`pipelined`)
        try:
            return self._pipeline(script, calls, client)
        except TRANSIENT as first:
            client.connection.disconnect()
            try:
                return [after_resend(r) for r in self._pipeline(script, calls, client)]
            except TRANSIENT as exc:
                return [resend_failed(first, exc)] * len(calls)

    def run_one(self, script: Script, packed: bytes, client: Any) -> Any:
        """A single emit's call, packed (`onecall`), on this thread's emitter client (one Redis):
        its reply, or its exception once it failed twice. NOSCRIPT (it ran nothing) is raised:
        the caller sends the call again as EVAL (`run`)."""
        try:
            return _twice(lambda: execute_packed(client, packed))
        except NoScriptError:
            raise
        except (*TRANSIENT, ResponseError) as exc:
            return exc

    @staticmethod
    def _pipeline(script: Script, calls: Sequence[Call], client: Any) -> list[Any]:
        return pipelined(client, [(script, keys, args) for keys, args in calls])

    def _run_cluster(self, script: Script, calls: Sequence[Call]) -> list[Any]:
        groups: dict[str, list[int]] = {}
        nodes: dict[str, Any] = {}
        for i, (keys, _) in enumerate(calls):
            try:
                node = self.client.get_node_from_key(keys[0])
            except RedisClusterException as exc:  # no node known for its slot: nothing was sent
                return [NotSent(f"no node of the Redis Cluster answered: {exc}")] * len(calls)
            groups.setdefault(node.name, []).append(i)
            nodes[node.name] = node
        replies: list[Any] = [None] * len(calls)

        def on_node(name: str) -> None:
            idx = groups[name]
            connection = nodes[name].redis_connection
            try:
                if connection is None:  # a node redis-py let go of (it failed): nothing was sent
                    raise NotSent(f"the cluster node {name} is gone from redis-py's map")
                got = self._pipeline(script, [calls[i] for i in idx], connection)
            except (*TRANSIENT, ResponseError) as exc:
                got = [exc] * len(idx)
            for i, reply in zip(idx, got, strict=True):
                replies[i] = reply

        if len(groups) == 1:
            on_node(next(iter(groups)))
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="distbatch-node")
            list(self._pool.map(on_node, groups))
        moved = False
        deadline: float | None = None
        hung: dict[str, BaseException] = {}  # node -> the error of a resend that timed out there too
        node_of = {i: name for name, idx in groups.items() for i in idx}
        for i, reply in enumerate(replies):
            if isinstance(reply, ELSEWHERE):  # a slot on the move, a node gone: via the cluster client
                moved = True
                keys, args = calls[i]
                if deadline is None:  # one wait for a slot on the move, for all of them
                    deadline = time.monotonic() + SLOT_MOVE_WAIT_S
                timed_out = isinstance(reply, redis.TimeoutError)
                try:
                    if timed_out and node_of[i] in hung:  # its node hangs: no third socket timeout
                        raise hung[node_of[i]]
                    # after a timeout the node's own attempt was the first: one more send (a node
                    # that hangs costs two socket timeouts, as the README says), else two
                    resend = once if timed_out else once_more
                    replies[i] = resend(script, keys, args, self.client, deadline)
                except (*TRANSIENT, ResponseError) as exc:
                    if timed_out and isinstance(exc, redis.TimeoutError):
                        hung[node_of[i]] = exc
                    # not sent only if the node's own attempt was not either (a redirect runs nothing)
                    first_unsent = isinstance(reply, ResponseError) or never_sent(reply)
                    replies[i] = exc if first_unsent or not isinstance(exc, NotSent) else MaybeRan(
                        f"sent to its node first, where it may have run ({describe(reply)}); then: {exc}")
        if moved:  # the slots map afresh; with no node answering, the next call tries again
            with contextlib.suppress(RedisClusterException, *TRANSIENT):
                self.client.nodes_manager.initialize()
        return replies


def once(script: Script, keys: list[Any], args: list[Any], client: Any,
         deadline: float | None = None) -> Any:
    """Call a script once (a slot on the move waited out until `deadline`: `patient`)."""
    return patient(lambda: call(script, keys, args, client), client, deadline)


def once_more(script: Script, keys: list[Any], args: list[Any], client: Any = None,
              deadline: float | None = None) -> Any:
    """Call a script; after a connection error send the very same call once more. Safe because
    every distbatch script is idempotent per call id or token (whatever redis-py's own retry
    setting is). A slot on the move is waited out until `deadline` (`patient`)."""
    c = script.registered_client if client is None else client
    return _twice(lambda: once(script, keys, args, c, deadline))


def _twice(send: Callable[[], Any]) -> Any:
    try:
        return send()
    except TRANSIENT as first:
        if slot_moving(first.__cause__ or first):  # a slot on the move, waited for already
            raise
        try:
            return send()
        except REFUSED_WRITE as second:
            raise after_resend(second) from second
        except TRANSIENT as second:
            err = resend_failed(first, second)
            if err is second:
                raise  # as it is: `from second` would make it its own cause
            raise err from second
