"""Concurrent `AsyncBatcher.emit` / `emit_many` calls share script calls.

Calls that arrive in the same turn of the event loop (1,000 tasks in a `gather`, a burst of HTTP
requests) are sent as one `emit_many` per source; each caller then gets its own results (indexed
into its own payloads) or its own error, as if it had called alone:

- a payload error fails only the call that sent the bad payload (nothing is written before every
  payload is checked, so the other calls are simply sent again without it);
- a Redis failure part-way gives each call an `EmitError` about its own events (or its results,
  when all of its events were stored);
- any other error (a user's Mapping that fails as it is read) sends each call again alone, so
  it fails only its own;
- a call cancelled (or timed out) before its group's first script goes out sends nothing (also
  while the group waits for a connection: it goes without it), and a group whose every call was
  cancelled while in flight is cancelled too, as a call alone would be.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis

from .errors import EmitError, PayloadError
from .models import EmitResult

EmitMany = Callable[[str, list[Mapping[str, Any]]], Awaitable[list[EmitResult]]]
Waiter = tuple[Sequence[Mapping[str, Any]], "asyncio.Future[list[EmitResult]]"]


class Regroup(Exception):
    """Raised by the driver before a group's first script call goes out when a caller of it was
    cancelled meanwhile: nothing was sent, and the group goes again without that caller."""


SENDING: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("SENDING", default=None)
"""In a group's send: asked by the driver right before the call's first script goes out (after
any wait for a connection), whether every caller still waits. A caller cancelled while the group
waited (for a connection, the calls in flight, a registry read) stored events anyway: its
`wait_for` timed out, and a retry of it stored them twice."""


class Coalescer:
    def __init__(self, emit_many: EmitMany, max_events: int = 1000) -> None:
        self.emit_many = emit_many
        self.max_events = max_events
        """A group closes once it holds this many events (a call is never split)."""
        self._pending: dict[str, list[Waiter]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def emit(self, source: str, payloads: Sequence[Mapping[str, Any]]) -> list[EmitResult]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[EmitResult]] = loop.create_future()
        self._pending.setdefault(source, []).append((payloads, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for source, waiters in pending.items():
            group: list[Waiter] = []
            size = 0
            for w in waiters:
                group.append(w)
                size += len(w[0])
                if size >= self.max_events:
                    self._start(source, group)
                    group, size = [], 0
            if group:
                self._start(source, group)

    def _start(self, source: str, group: list[Waiter]) -> None:
        task = asyncio.ensure_future(self._send(source, group))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

        def on_done(_: object) -> None:  # every caller gone: stop the send, as a call alone stops
            # (done, not only cancelled: one already told of its bad payload waits no more either;
            # the task first: a group answered whole calls this once per caller, O(n) each)
            if not task.done() and all(f.done() for _, f in group):
                task.cancel()

        for _, future in group:
            future.add_done_callback(on_done)

    async def _send(self, source: str, waiters: list[Waiter]) -> None:
        while True:
            waiters = [w for w in waiters if not w[1].done()]  # a call cancelled meanwhile sends nothing
            if not waiters:
                return
            starts = _starts(waiters)
            SENDING.set(_gate(waiters))
            try:
                results = await self.emit_many(source, [p for ps, _ in waiters for p in ps])
            except Regroup:
                continue
            except PayloadError as exc:
                if exc.event is None:
                    _fail_all(waiters, exc)
                    return
                w = bisect.bisect_right(starts, exc.event) - 1
                local = exc.event - starts[w]
                _, bad = waiters.pop(w)  # nothing was written: the other calls go again
                message = str(exc).replace(f"event {exc.event}:", f"event {local}:", 1)
                own = PayloadError(exc.code, message, event=local, reason=exc.reason)
                own.__cause__ = exc.__cause__
                _fail(bad, own)
                continue
            except EmitError as exc:
                _split_emit_error(waiters, starts, exc)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:  # Redis away: nobody's call; each
                _fail_all(waiters, exc)  # alone again waited out another socket timeout, every one
                return
            except Exception as exc:
                if len(waiters) > 1:  # whose? each call alone says (nothing was written: it
                    await asyncio.gather(*(self._send(source, [w]) for w in waiters))  # failed before)
                else:
                    _fail_all(waiters, exc)
                return
            except BaseException as exc:
                _fail_all(waiters, exc)
                raise
            mine = _by_waiter(results, starts)
            for i, (_, future) in enumerate(waiters):
                if not future.done():
                    future.set_result(mine[i])
            return


def _gate(waiters: list[Waiter]) -> Callable[[], bool]:
    """True while every caller waits, and for good once it said so (the call's first script has
    gone out then: what follows belongs to the same call, as a call alone)."""
    sent = False

    def still() -> bool:
        nonlocal sent
        sent = sent or not any(f.done() for _, f in waiters)
        return sent

    return still


def _starts(waiters: list[Waiter]) -> list[int]:
    starts, n = [], 0
    for ps, _ in waiters:
        starts.append(n)
        n += len(ps)
    return starts


def _by_waiter(results: list[EmitResult], starts: list[int]) -> list[list[EmitResult]]:
    """Each call's results, re-indexed into its own payloads (results are in event order)."""
    if len(starts) == 1:
        return [results]  # one call alone: its indices already are its own
    mine: list[list[EmitResult]] = [[] for _ in starts]
    w = 0
    for r in results:
        while w + 1 < len(starts) and r.event >= starts[w + 1]:
            w += 1
        mine[w].append(r._replace(event=r.event - starts[w]))
    return mine


def _split_emit_error(waiters: list[Waiter], starts: list[int], exc: EmitError) -> None:
    mine = _by_waiter(exc.results, starts)
    cause = exc.__cause__ or exc
    for i, (ps, future) in enumerate(waiters):
        lo, hi = starts[i], starts[i] + len(ps)
        stored = [e - lo for e in exc.stored if lo <= e < hi]
        if len(stored) == len(ps):
            if not future.done():
                future.set_result(mine[i])
            continue
        uncertain = [e - lo for e in exc.uncertain if lo <= e < hi]
        own = EmitError(mine[i], stored, uncertain, len(ps), cause)
        own.__cause__ = exc.__cause__
        _fail(future, own)


def _fail(future: asyncio.Future[list[EmitResult]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _fail_all(waiters: list[Waiter], exc: BaseException) -> None:
    for _, future in waiters:
        _fail(future, exc)
