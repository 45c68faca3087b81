"""AsyncBatcher beyond the shared behaviour suite (which runs on both APIs): concurrency, the
connection pool, lost replies under concurrent emitters, hand-off to real workers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from distbatch import Batcher, ConfigError, EmitError, ManualClock, PayloadError
from distbatch.aio import AsyncBatcher
from distbatch.coalesce import Coalescer
from distbatch.codec import decode_events
from distbatch.faultproxy import FaultProxy
from distbatch.models import EmitResult

from .processes import Procs, delivered, wait_for
from .redis_server import RedisServer


def test_a_thousand_concurrent_emits_store_each_event_once(redis_server: RedisServer, namespace: str) -> None:
    async def main() -> tuple[list[list], int]:
        async with await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False,
                                               clock=ManualClock(0), max_connections=16) as b:
            await b.register("c", version="v1", source="s", handler="m.h",
                             batch={"count": 7, "window": "1h", "key": "k"})
            results = await asyncio.gather(*(b.emit("s", {"k": str(i % 13), "n": i}) for i in range(1000)))
            return results, b.client.connection_pool.max_connections

    results, pool_size = asyncio.run(main())
    direct = redis.Redis.from_url(redis_server.url)
    b = Batcher(direct, namespace=namespace, handoff=False)
    cut = [r[0].batch for r in results if r[0].batch is not None]
    in_batches = [e.payload["n"] for batch in cut for e in batch.events]
    assert all(len(batch.events) == 7 for batch in cut)
    buffered = [e.payload["n"] for m in direct.zrange(b.keys.deadlines, 0, -1)
                for e in decode_events(b"".join(direct.lrange(b.keys.buffer_prefix.encode() + m, 0, -1)))]
    assert b.counters()["events_in:c@v1"] == 1000
    assert sorted(in_batches + buffered) == list(range(1000))  # each event once, none lost
    # one emitter id per call in flight, never more than the pool's connections
    calls = list(direct.scan_iter(f"{{{namespace}}}:call:*"))
    assert 1 <= len(calls) <= pool_size == 16


def test_burst_waits_for_a_connection_instead_of_failing(redis_server: RedisServer, namespace: str) -> None:
    """redis.asyncio's plain pool raises MaxConnectionsError past its size; from_url's blocking
    pool makes the 201st concurrent emit wait."""
    async def main() -> int:
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False,
                                        max_connections=4)
        await b.register("c", version="v1", source="s", handler="m.h", batch={"count": 1000, "window": "1h"})
        results = await asyncio.gather(*(b.emit("s", {"n": i}) for i in range(200)))
        await b.aclose()
        return len(results)

    assert asyncio.run(main()) == 200
    assert Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace,
                   handoff=False).counters()["events_in:c@v1"] == 200


@pytest.mark.parametrize("coalesce", [False, True], ids=["call-per-emit", "coalesced"])
@pytest.mark.parametrize("retrying_client", [True, False], ids=["redis-py-retries", "no-retries"])
def test_lost_replies_under_concurrent_emits_never_store_twice(
    proxy: FaultProxy, redis_server: RedisServer, namespace: str, retrying_client: bool, coalesce: bool
) -> None:
    """Redis runs the accumulate call, the proxy drops its reply: the resend (redis-py's or
    distbatch's own) must be recognised even while other tasks' calls interleave."""
    retry = AsyncRetry(NoBackoff(), 3 if retrying_client else 0)  # (a sync Retry never retries here)

    async def main() -> int:
        client = redis.asyncio.Redis(host="127.0.0.1", port=proxy.port, retry=retry)
        b = AsyncBatcher(client, namespace=namespace, handoff=False, clock=ManualClock(0), coalesce=coalesce)
        await b.register("c", version="v1", source="s", handler="m.h", batch={"count": 1000, "window": "1h"})
        fired = 0
        for round_ in range(5):
            proxy.drop_next_reply(b"EVALSHA")
            await asyncio.gather(*(b.emit("s", {"n": round_ * 40 + i}) for i in range(40)))
            fired += proxy.fired
        await b.aclose()
        return fired

    assert asyncio.run(main()) >= 5
    direct = redis.Redis.from_url(redis_server.url)
    b = Batcher(direct, namespace=namespace, handoff=False)
    assert b.counters()["events_in:c@v1"] == 200
    assert direct.llen(b.keys.buffer("c@v1", None)) == 200


def test_sync_client_is_refused_with_a_clear_word(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigError) as err:
        AsyncBatcher(redis.Redis.from_url(redis_server.url))
    assert err.value.code == "client_sync" and "Batcher" in str(err.value)
    with pytest.raises(ConfigError) as err:
        AsyncBatcher(redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True))
    assert err.value.code == "client_decode_responses"


def test_async_cuts_are_handed_to_real_workers(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    procs = Procs(redis_server.url, namespace, tmp_path)
    direct = redis.Redis.from_url(redis_server.url)
    direct.delete("test:delivered")
    try:
        procs.worker()

        async def main() -> None:
            # a plain redis.asyncio client: the hand-off finds its way to RQ on the same Redis
            b = AsyncBatcher(redis.asyncio.Redis.from_url(redis_server.url), namespace=namespace)
            await b.register("w", version="v1", source="s", handler="tests.handlers.record",
                             batch={"count": 5, "window": "1h", "key": "k"})
            await asyncio.gather(*(b.emit("s", {"k": str(i % 4), "n": i}) for i in range(100)))
            await b.aclose()

        asyncio.run(main())
        wait_for(lambda: len(delivered(direct)) == 20, 30, "20 batches delivered", procs.logs)
        got = sorted(p["n"] for d in delivered(direct) for p in d["payloads"])
        assert got == list(range(100))
    finally:
        procs.stop_all()


class _Unreadable(Mapping[str, Any]):
    """A user's Mapping (a lazy view) that fails as it is read: no PayloadError, a KeyError."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(["a"])

    def __len__(self) -> int:
        return 1


def test_coalesced_emits_fail_cancel_and_report_each_on_its_own(redis_server: RedisServer,
                                                               namespace: str) -> None:
    """Three ways a coalesced emit answered for its neighbours: a payload that raised a KeyError
    as it was read failed every call sent with it; a call cancelled before its group was sent
    still stored its event (a caller retrying it stored it twice); and a payload error lost its
    `reason` and cause, which a call alone keeps."""
    async def main() -> tuple[Any, ...]:
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False)
        await b.register("c", version="v1", source="s", handler="m.h", batch={"count": 1000, "window": "1h"})
        good, bad = await asyncio.gather(b.emit("s", {"ok": 1}), b.emit("s", {"x": _Unreadable()}),
                                         return_exceptions=True)
        cancelled = asyncio.create_task(b.emit("s", {"cancelled": 1}))
        await asyncio.sleep(0)  # its event is queued; nothing sent yet
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await asyncio.sleep(0.2)
        errors = await asyncio.gather(b.emit("s", {"n": 1}), b.emit("s", {"when": {1, 2}}),
                                      return_exceptions=True)
        alone = AsyncBatcher(b.client, namespace=namespace, handoff=False, coalesce=False)
        with pytest.raises(PayloadError) as one:
            await alone.emit("s", {"when": {1, 2}})
        counters = await b.counters()
        await b.aclose()
        return good, bad, errors, one.value, counters

    good, bad, errors, alone, counters = asyncio.run(main())
    assert isinstance(good, list) and good[0].binding == "c@v1"  # the innocent call stored
    assert isinstance(bad, KeyError)
    coalesced = errors[1]
    assert isinstance(errors[0], list) and isinstance(coalesced, PayloadError)
    assert (coalesced.reason, type(coalesced.__cause__)) == (alone.reason, type(alone.__cause__))
    assert str(coalesced) == str(alone)
    assert counters["events_in:c@v1"] == 2  # {"ok": 1} and {"n": 1}; not the cancelled one


def test_a_bad_payload_fails_only_its_own_coalesced_emit(redis_server: RedisServer, namespace: str) -> None:
    async def main() -> list[Any]:
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False)
        await b.register("c", version="v1", source="s", handler="m.h",
                         batch={"count": 1000, "window": "1h", "key": "k"})
        payloads: list[Any] = [{"k": "a", "n": i} for i in range(10)]
        payloads[3] = {"k": "a", "bad": object()}
        payloads[7] = "not a mapping"
        out = await asyncio.gather(*(b.emit("s", p) for p in payloads), return_exceptions=True)
        await b.aclose()
        return out

    out = asyncio.run(main())
    assert isinstance(out[3], PayloadError) and out[3].code == "payload_unencodable" and out[3].event == 0
    assert str(out[3]).startswith("event 0: ")
    assert isinstance(out[7], PayloadError) and out[7].code == "payload_type"
    ok = [r for i, r in enumerate(out) if i not in (3, 7)]
    assert all(len(r) == 1 and r[0].event == 0 and r[0].partition_key == "a" for r in ok)
    b = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, handoff=False)
    assert b.counters()["events_in:c@v1"] == 8


def test_a_failure_part_way_is_split_per_caller() -> None:
    """emit_many stored events 0-1, event 2 is uncertain, 3 was not sent: each coalesced caller
    learns its own fate."""
    async def emit_many(source: str, payloads: list[Any]) -> list[EmitResult]:
        stored = [EmitResult("b@v1", None, event=i) for i in (0, 1)]
        raise EmitError(stored, [0, 1], [2], len(payloads), redis.ConnectionError("gone"))

    async def main() -> list[Any]:
        c = Coalescer(emit_many)
        calls = [c.emit("s", [{"n": 0}]), c.emit("s", [{"n": 1}, {"n": 2}, {"n": 3}])]
        return await asyncio.gather(*calls, return_exceptions=True)

    first, second = asyncio.run(main())
    assert first == [EmitResult("b@v1", None, event=0)]
    assert isinstance(second, EmitError)  # its own events 0, 1, 2 are the call's 1, 2, 3
    assert second.stored == [0] and second.uncertain == [1] and second.not_sent == [2]
    assert second.results == [EmitResult("b@v1", None, event=0)]


def test_concurrent_emit_many_calls_get_their_own_results(redis_server: RedisServer, namespace: str) -> None:
    async def main() -> list[Any]:
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False)
        await b.register("c", version="v1", source="s", handler="m.h",
                         batch={"count": 4, "window": "1h", "key": "k"})
        calls = [b.emit_many("s", [{"k": f"c{c}", "n": i} for i in range(c + 1)]) for c in range(6)]
        calls.append(b.emit_many("s", [{"k": "bad"}, {"k": "bad", "x": object()}]))
        out = await asyncio.gather(*calls, return_exceptions=True)
        await b.aclose()
        return out

    out = asyncio.run(main())
    for c in range(6):
        assert [(r.event, r.partition_key) for r in out[c]] == [(i, f"c{c}") for i in range(c + 1)]
        assert [r.batch is not None for r in out[c]] == [i == 3 for i in range(c + 1)]
    assert isinstance(out[6], PayloadError) and out[6].event == 1  # the bad call alone, nothing of it stored
    counters = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, handoff=False).counters()
    assert counters["events_in:c@v1"] == 21


@pytest.mark.parametrize("kind", ["async def", "async __call__", "lambda"])
def test_an_async_on_cut_hook_is_awaited_with_the_cut_ids(redis_server: RedisServer, namespace: str,
                                                          kind: str) -> None:
    """Only an `async def` was awaited: an object with an async __call__, or a lambda returning a
    coroutine, was called and its coroutine dropped (the hook never ran)."""
    handed: list[list[str]] = []

    async def on_cut(ids: Any) -> None:
        await asyncio.sleep(0)
        handed.append(list(ids))

    class Hook:
        async def __call__(self, ids: Any) -> None:
            await on_cut(ids)

    hook: Any = {"async def": on_cut, "async __call__": Hook(), "lambda": lambda ids: on_cut(ids)}[kind]

    async def main() -> list[str]:
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, on_cut=hook)
        await b.register("c", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h"})
        results = await b.emit_many("s", [{"n": i} for i in range(5)])
        await b.aclose()
        return [r.batch.id for r in results if r.batch is not None]

    cut = asyncio.run(main())
    assert len(cut) == 2 and [i for ids in handed for i in ids] == cut


def test_an_async_batcher_refuses_a_second_event_loop(redis_server: RedisServer, namespace: str) -> None:
    b = AsyncBatcher(redis.asyncio.Redis.from_url(redis_server.url), namespace=namespace, handoff=False)

    async def first() -> None:
        await b.register("c", version="v1", source="s", handler="m.h", batch={"count": 100, "window": "1h"})
        await b.emit("s", {"n": 0})

    asyncio.run(first())
    with pytest.raises(ConfigError) as err:
        asyncio.run(b.emit("s", {"n": 1}))  # a new loop: refused before anything is sent
    assert err.value.code == "aio_other_loop"
    counters = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, handoff=False).counters()
    assert counters["events_in:c@v1"] == 1


@pytest.mark.parametrize("api", ["sync", "async"])
def test_redis_refusing_connections_means_nothing_sent(namespace: str, api: str) -> None:
    """Bindings cached, then Redis gone. The first call meets the dead socket and may honestly be
    'uncertain' (a reply lost after Redis ran it looks the same); from then on every connection
    is refused, so the error says not sent (re-emitting cannot duplicate), never 'uncertain'."""
    from distbatch.testing import RedisServer as Own

    own = Own().start()
    payloads = [{"n": i} for i in range(5)]
    try:
        if api == "sync":
            b = Batcher.from_url(own.url, namespace=namespace, handoff=False)
            b.register("c", version="v1", source="s", handler="m.h", batch={"count": 100, "window": "1h"})
            b.emit("s", {"n": -1})
            own.stop()
            with pytest.raises(EmitError):
                b.emit("s", {"n": -2})  # meets the dead socket
            with pytest.raises(EmitError) as one:
                b.emit("s", {"n": -3})  # a single emit's own path says it too
            assert one.value.stored == one.value.uncertain == [] and one.value.not_sent == [0]
            with pytest.raises(EmitError) as err:
                b.emit_many("s", payloads)
        else:
            async def main() -> None:
                a = await AsyncBatcher.from_url(own.url, namespace=namespace, handoff=False)
                await a.register("c", version="v1", source="s", handler="m.h",
                                 batch={"count": 100, "window": "1h"})
                await a.emit("s", {"n": -1})
                own.stop()
                with pytest.raises(EmitError):
                    await a.emit("s", {"n": -2})  # meets the dead socket
                await a.emit_many("s", payloads)

            with pytest.raises(EmitError) as err:
                asyncio.run(main())
        assert err.value.stored == [] and err.value.uncertain == [] and err.value.not_sent == [0, 1, 2, 3, 4]
    finally:
        own.cleanup()


def test_an_async_emit_that_cuts_while_a_ticket_waits_makes_no_hand_off_call(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script said a ticket waits: no worker thread, no LLEN; none waiting: one is enqueued."""
    import distbatch.aio as aio

    threads: list[Any] = []
    real = asyncio.to_thread

    async def counting(fn: Any, *args: Any) -> Any:
        threads.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(aio.asyncio, "to_thread", counting)

    async def main() -> tuple[int, int, int]:
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace)
        await b.register("f", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
        await b.emit("s", {"n": 0})
        first = len(threads)
        for n in (1, 2, 3):
            await b.emit("s", {"n": n})
        assert b.dispatcher is not None
        waiting = b.dispatcher.queued()
        await b.aclose()
        return first, len(threads) - first, waiting

    first, later, waiting = asyncio.run(main())
    assert first == 1 and later == 0 and waiting == 1


def test_an_uncoalesced_async_emit_cuts_replans_and_reports_as_emit_many_would(
    redis_server: RedisServer, namespace: str
) -> None:
    """`coalesce=False`: each `await emit` is its own planned call (`Ingest.emit_one`): it cuts,
    follows a binding another instance registered meanwhile, and names what was not sent."""
    other = Batcher(redis.Redis.from_url(redis_server.url), namespace=namespace, handoff=False)

    async def main() -> list[list[EmitResult]]:
        a = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False, coalesce=False)
        await a.register("f", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h"})
        got = [await a.emit("s", {"n": 0}), await a.emit("s", {"n": 1})]
        other.register("g", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
        got.append(await a.emit("s", {"n": 2}))  # refused as stale, planned again: both bindings
        with pytest.raises(PayloadError):
            await a.emit("s", {"n": {1, 2}})  # not encodable: nothing sent
        return got

    first, second, third = asyncio.run(main())
    assert [r.batch for r in first] == [None]
    assert [[e.payload["n"] for e in r.batch.events] for r in second if r.batch] == [[0, 1]]
    assert sorted(r.binding for r in third) == ["f@v1", "g@v1"]
    assert [[e.payload["n"] for e in r.batch.events] for r in third if r.batch] == [[2]]
    assert other.counters()["events_in:f@v1"] == 3


@pytest.mark.parametrize("call", ["emit", "emit_many"])
def test_a_lost_reply_then_refused_retries_is_uncertain_not_unsent(
    proxy: FaultProxy, redis_server: RedisServer, namespace: str, call: str
) -> None:
    """As on the sync API: the call runs, its reply is lost and every reconnect of redis-py's
    own retries is refused; the last error says "refused", but the event may be stored (it is):
    uncertain, never 'not sent'."""

    async def main() -> EmitError:
        client = redis.asyncio.Redis(host="127.0.0.1", port=proxy.port, retry=AsyncRetry(NoBackoff(), 3))
        b = AsyncBatcher(client, namespace=namespace, handoff=False)
        await b.register("f", version="v1", source="s", handler="m.h", batch={"count": 10, "window": "1h"})
        for n in range(2):  # Redis has the emit scripts: the call that loses its reply runs
            await b.emit("s", {"n": n})
            await b.emit_many("s", [{"n": n}, {"n": n}])
        proxy.drop_next_reply(b"EVALSHA")
        proxy.stop_listening()
        with pytest.raises(EmitError) as err:
            await (b.emit("s", {"n": 2}) if call == "emit" else b.emit_many("s", [{"n": 2}]))
        return err.value

    err = asyncio.run(main())
    assert err.uncertain == [0] and err.not_sent == [] and err.stored == []
    direct = redis.Redis.from_url(redis_server.url)
    assert direct.llen(Batcher(direct, namespace=namespace, handoff=False).keys.buffer("f@v1", None)) == 7


def test_a_coalesced_caller_cancelled_while_its_group_waits_stores_nothing(
        redis_server: RedisServer, namespace: str) -> None:
    """Cancelled callers were dropped only before the group's `emit_many` began: one that timed
    out while the group waited inside it (for the one connection, held by a call Redis had
    paused) was told TimeoutError, and its event was stored anyway; a retry stored it twice."""
    async def main() -> list[str]:
        b = await AsyncBatcher.from_url(redis_server.url, namespace=namespace, handoff=False,
                                        max_connections=1)
        for s in ("s0", "s1"):
            await b.register(f"t-{s}", version="v1", source=s, batch={"count": 100, "window": "1h"},
                             handler="m.h")
        pauser = redis.Redis.from_url(redis_server.url)
        pause = asyncio.create_task(asyncio.to_thread(pauser.execute_command, "CLIENT", "PAUSE", "500"))
        await asyncio.sleep(0.05)
        held = asyncio.create_task(b.emit("s0", {"who": "A"}))  # the only connection, Redis paused
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(b.emit("s1", {"who": "B"}))  # one group, waiting for the connection
        later = asyncio.create_task(b.emit("s1", {"who": "C"}))
        await asyncio.sleep(0.1)
        gone.cancel()  # as its wait_for's timeout does
        await asyncio.gather(later, held, pause)
        assert gone.cancelled()
        stored = [e.payload["who"] for e in await b.drop("t-s1@v1")]
        await b.aclose()
        return stored

    assert asyncio.run(main()) == ["C"]
