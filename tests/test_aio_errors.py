"""AsyncBatcher: bad input gets the same named error as on the sync Batcher (found by a review of
the async API; each failed before its fix)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio

from distbatch import Batcher, ConfigError, PayloadError
from distbatch.aio import AsyncBatcher

from .redis_server import RedisServer


def _both(url: str, namespace: str, call: Any, coalesce: bool) -> tuple[BaseException, BaseException]:
    sync = Batcher(redis.Redis.from_url(url), namespace=namespace + "s", handoff=False)
    sync.register("t", version="v1", source="s", batch={"count": 3, "window": "1h", "key": "k"},
                  handler="m.h")
    with pytest.raises(Exception) as s_err:
        call(sync)

    async def main() -> BaseException:
        b = AsyncBatcher(redis.asyncio.Redis.from_url(url), namespace=namespace + "a", handoff=False,
                         coalesce=coalesce)
        await b.register("t", version="v1", source="s", batch={"count": 3, "window": "1h", "key": "k"},
                         handler="m.h")
        try:
            await call(b)
        except Exception as exc:
            return exc
        finally:
            await b.aclose()
        raise AssertionError("no error")

    return s_err.value, asyncio.run(main())


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "call-per-emit"])
@pytest.mark.parametrize("payloads", [{"k": "a"}, "abc", b"abc"], ids=["dict", "str", "bytes"])
def test_emit_many_of_one_mapping_or_string_is_payloads_type(
        redis_server: RedisServer, namespace: str, payloads: Any, coalesce: bool) -> None:
    """Sync: `emit_many("s", {"k": "a"})` is PayloadError `payloads_type` ("is one dict:
    emit_many takes a list ... emit takes one"). Async: AsyncBatcher.emit_many turns it into a
    list first (aio.py, `list(payloads)`), so ingest's check never sees it: a `payload_type`
    error about the dict's first key ('k' must be a mapping, not str)."""
    s, a = _both(redis_server.url, namespace, lambda b: b.emit_many("s", payloads), coalesce)
    assert isinstance(s, PayloadError) and s.code == "payloads_type"
    assert type(a) is type(s) and a.code == s.code, (a, s)


def test_coalesced_emit_many_to_an_unhashable_source_is_config_error(
        redis_server: RedisServer, namespace: str) -> None:
    """Sync `emit_many(["s"], ...)` is ConfigError `source_type`; the coalescer keys its
    pending calls by source (`self._pending.setdefault(source, ...)`) before any check: a bare
    `TypeError: unhashable type: 'list'`."""
    s, a = _both(redis_server.url, namespace, lambda b: b.emit_many(["s"], [{"k": "a"}]), True)
    assert isinstance(s, ConfigError) and s.code == "source_type"
    assert isinstance(a, ConfigError) and a.code == "source_type", repr(a)


def test_server_ms_on_another_loop_is_aio_other_loop(redis_server: RedisServer, namespace: str) -> None:
    """README: "another loop gets ConfigError("aio_other_loop") before anything is sent". Every
    method checks (through `start()` or `_own_loop()`) except `server_ms()`, which drives
    `Ingest.server_ms()` straight on the first loop's client: a bare RuntimeError
    ("Event loop is closed"), or worse, a call on a loop that still runs."""
    async def first() -> AsyncBatcher:
        b = AsyncBatcher(redis.asyncio.Redis.from_url(redis_server.url), namespace=namespace, handoff=False)
        await b.server_ms()
        await b.counters()
        return b

    b = asyncio.run(first())

    async def second() -> BaseException:
        with pytest.raises(Exception) as caught:
            await b.counters()
        assert isinstance(caught.value, ConfigError) and caught.value.code == "aio_other_loop"
        try:
            await b.server_ms()
        except Exception as exc:
            return exc
        raise AssertionError("server_ms ran on another loop")

    err = asyncio.run(second())
    assert isinstance(err, ConfigError) and err.code == "aio_other_loop", repr(err)


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "call-per-emit"])
def test_emit_to_an_unhashable_source_is_config_error_on_both(redis_server: RedisServer, namespace: str,
                                                              coalesce: bool) -> None:
    """The sync `emit`'s fast path looked the source up in a dict first: a bare `TypeError:
    unhashable type: 'list'`, as the coalescer's grouping by source gave on the async one."""
    s, a = _both(redis_server.url, namespace, lambda b: b.emit(["s"], {"k": "a"}), coalesce)
    assert isinstance(s, ConfigError) and s.code == "source_type", repr(s)
    assert isinstance(a, ConfigError) and a.code == "source_type", repr(a)
