"""What the sans-I/O core asks of Redis: the operations a procedure yields to its driver.

Every operation of the ingest side (emit, register, flush, drop, ...) is written once, as a
generator (`Proc`) that yields these and is sent each reply. `Batcher` drives procedures on a
`redis.Redis` (or `RedisCluster`); `AsyncBatcher` awaits them on `redis.asyncio`. So the code that
builds script arguments, decodes replies and re-plans after a registry change exists once.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
Call = tuple[list[Any], list[Any]]
"""(keys, args) of one script call."""


@dataclass(frozen=True, slots=True)
class Cmd:
    """One plain command: `client.<name>(*args)`; its reply is sent back."""

    name: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Atomic:
    """Commands read as one (MULTI/EXEC on one Redis; on a cluster, in order, one by one — so
    put the one that must be read first first). The list of replies is sent back. Reads only:
    where MULTI is refused (`multi_refused`) they are read in order, one by one, too."""

    cmds: tuple[Cmd, ...]


def multi_refused(exc: BaseException) -> str | None:
    """Why Redis refused an `Atomic`'s MULTI/EXEC, where reading in order would be answered:
    'acl' (a look-only user, +@read, has no MULTI: for good), 'oom' (past `maxmemory` Redis
    queues nothing in a MULTI, though it answers the same reads alone: `stats`, `triggers list`
    and `dead list` failed exactly when an operator looks), or None."""
    import redis

    if isinstance(exc, redis.exceptions.NoPermissionError) and "'multi'" in str(exc).lower():
        return "acl"
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "oom"
    return None


@dataclass(frozen=True, slots=True)
class Eval:
    """One script call by name (`scripts.NAMES`), sent once more after a connection error:
    every distbatch script is idempotent per call id or token, and one that removes what it
    reports (a drain, a flush) keeps its reply for its resend (`lua/includes/kept_reply.lua`)."""

    script: str
    keys: Sequence[Any]
    args: Sequence[Any]


@dataclass(frozen=True, slots=True)
class Store:
    """Accumulate calls, one per shard, from `build(emitter_id, call_ids)`: the driver gives the
    emitter identity (one caller at a time per emitter id, so a call id a retry repeats is
    recognised). Sent back: one reply per call, an exception in place of a call that failed."""

    build: Callable[[str, Iterator[int]], list[Call]]
    script: str = "accumulate"
    """`accumulate`, or `accumulate_one` for a single emit's call."""


@dataclass(frozen=True, slots=True)
class Handoff:
    """Batches were cut (ids; empty when their ids were lost with a reply): wake the workers.
    The driver never raises from it (a sweeper hands off what this misses)."""

    batch_ids: Sequence[str]
    queued: int = -1
    """Tickets already waiting in the RQ queue, as the script saw it (-1: not known)."""


Op = Cmd | Atomic | Eval | Store | Handoff
Proc = Generator[Op, Any, T]
