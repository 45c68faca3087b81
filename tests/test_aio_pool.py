"""AsyncBatcher with its connection pool full: a coalesced caller cancelled while its group waits
for a connection stores nothing, and a pool that never frees one reports the events not sent
(found by a review of the async API; each failed before its fix).

Each test keeps the only pool connection busy with another distbatch call while Redis is paused
(CLIENT PAUSE)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis

from distbatch import EmitError
from distbatch.aio import AsyncBatcher

from .redis_server import RedisServer


async def _hold_the_only_connection(b: AsyncBatcher, url: str, pause_ms: int) -> tuple[Any, Any]:
    """Redis paused; `counters()` then takes the pool's one connection and waits with it."""
    pauser = redis.Redis.from_url(url)
    pause = asyncio.create_task(asyncio.to_thread(pauser.execute_command, "CLIENT", "PAUSE", str(pause_ms)))
    await asyncio.sleep(0.05)
    reader = asyncio.create_task(b.counters())
    await asyncio.sleep(0.01)
    return pause, reader


def test_caller_cancelled_while_its_group_waits_for_a_pool_connection_stores_nothing(
        redis_server: RedisServer, namespace: str) -> None:
    """README: "A call cancelled (or timed out) before its group is sent stores nothing";
    coalesce.py: "... (also while the group waits for a connection: it goes without it)".
    Here the group waits for a connection inside redis-py's BlockingConnectionPool (another
    distbatch call holds it), after distbatch's gate said "every caller still waits": A is
    cancelled long before anything is sent, yet A's event is stored (a retry of A stores it twice)."""
    async def main() -> list[str]:
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False,
                                        max_connections=1)
        await b.register("t", version="v1", source="s", batch={"count": 100, "window": "1h"}, handler="m.h")
        await b.emit("s", {"who": "warm"})  # the registry is read: the emits below go straight to a Store
        pause, reader = await _hold_the_only_connection(b, redis_server.url, 500)
        gone = asyncio.create_task(b.emit("s", {"who": "A"}))  # one group with B, waiting for the connection
        later = asyncio.create_task(b.emit("s", {"who": "B"}))
        await asyncio.sleep(0.1)
        gone.cancel()  # as its wait_for's timeout would: nothing has been sent yet
        await asyncio.gather(later, reader, pause)
        assert gone.cancelled()
        stored = [e.payload["who"] for e in await b.drop("t@v1")]
        await b.aclose()
        return stored

    assert asyncio.run(main()) == ["warm", "B"]


def test_pool_timeout_is_not_sent_not_uncertain(redis_server: RedisServer, namespace: str) -> None:
    """An emit that never got a connection (the BlockingConnectionPool's `pool_timeout` ran out,
    twice: distbatch resends after the first) never reached Redis: README says such events are
    `not_sent` (safe to re-emit), as the sync Batcher reports MaxConnectionsError. The async API
    reports them `uncertain` instead."""
    async def main(coalesce: bool) -> EmitError:
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace + str(coalesce), handoff=False,
                                        max_connections=1, pool_timeout=0.3, coalesce=coalesce)
        await b.register("t", version="v1", source="s", batch={"count": 100, "window": "1h"}, handler="m.h")
        await b.emit("s", {"who": "warm"})
        pause, reader = await _hold_the_only_connection(b, redis_server.url, 1500)
        try:
            await b.emit("s", {"who": "A"})
        except EmitError as exc:
            err = exc
        else:
            raise AssertionError("the emit got a connection")
        await asyncio.gather(reader, pause)
        assert [e.payload["who"] for e in await b.drop("t@v1")] == ["warm"]  # A never reached Redis
        await b.aclose()
        return err

    for coalesce in (True, False):
        err = asyncio.run(main(coalesce))
        assert (err.stored, err.uncertain, err.not_sent) == ([], [], [0]), (coalesce, repr(err.__cause__))


def test_a_group_whose_read_meets_redis_away_fails_every_caller_at_once(redis_server: RedisServer,
                                                                        namespace: str) -> None:
    """A coalesced group's registry read timed out (Redis hung): the group was split and every
    call sent again alone, each waiting out another socket timeout on a Redis that was away for
    all of them. Redis away is nobody's call: each caller gets the error of the group's call."""
    async def main() -> tuple[list[BaseException | list[Any]], int]:
        first = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False)
        await first.register("t", version="v1", source="s", batch={"count": 100, "window": "1h"},
                             handler="m.h")
        await first.aclose()
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False,
                                        socket_timeout=0.3)  # the registry not read yet
        reads = 0
        real = b._read

        async def counted(op: Any) -> Any:
            nonlocal reads
            reads += 1
            return await real(op)

        b._read = counted  # type: ignore[method-assign]
        pauser = redis.Redis.from_url(redis_server.url)
        pause = asyncio.create_task(asyncio.to_thread(pauser.execute_command, "CLIENT", "PAUSE", "2000"))
        await asyncio.sleep(0.05)
        got = await asyncio.gather(*(b.emit("s", {"n": i}) for i in range(20)), return_exceptions=True)
        await pause
        await b.aclose()
        return got, reads

    got, reads = asyncio.run(main())
    assert all(isinstance(g, EmitError) and g.not_sent == [0]  # the registry read: nothing sent
               and isinstance(g.__cause__, redis.TimeoutError | redis.ConnectionError) for g in got), got
    assert reads == 1, f"{reads} reads: the group's calls were sent again one by one"


def test_a_call_cancelled_as_a_connection_comes_free_sends_nothing(redis_server: RedisServer,
                                                                   namespace: str) -> None:
    """A connection comes free and the caller gives up in the same turn of the loop: on Python
    3.11 `asyncio.wait_for` returned the slot and dropped the cancellation, so the call went on
    and stored its event, and its caller, told "cancelled" by nothing, stored it again on a retry
    (found by the second review)."""
    async def main() -> tuple[object, int]:
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False,
                                        coalesce=False, max_connections=4)
        await b.register("w", version="v1", source="s", handler="m.h", batch={"count": 1000, "window": "1h"})
        await b.emit("s", {"n": 0})
        sem = b._calls_in_flight
        assert sem is not None
        for _ in range(4):  # every connection in use
            await sem.acquire()
        task = asyncio.create_task(b.emit("s", {"n": 1}))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()
        sem.release()  # a connection comes free ...
        task.cancel()  # ... as the caller gives up
        try:
            outcome: object = await task
        except asyncio.CancelledError:
            outcome = "cancelled"
        for _ in range(3):
            sem.release()
        stored = len(await b.drop("w@v1"))
        await b.aclose()
        return outcome, stored

    assert asyncio.run(main()) == ("cancelled", 1)
