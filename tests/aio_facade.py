"""Runs the behaviour suite against AsyncBatcher: a sync front over it, its event loop in a
thread of its own. Inspection helpers (records, keys, scripts) come from a plain Batcher on the
same namespace; everything the tests exercise (register, emit, flush, drop, counters) is awaited
on the AsyncBatcher."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from distbatch import Batcher
from distbatch.aio import AsyncBatcher

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="aio-tests")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class SyncFront:
    def __init__(self, loop: LoopThread, make_client: Callable[[], Any], sync_client: Any, **kw: Any) -> None:
        self._loop = loop
        handoff = kw.get("handoff", True)

        async def build() -> AsyncBatcher:
            b = AsyncBatcher(make_client(), **kw)
            await b.start()
            return b

        self.aio = loop.run(build())
        inspect_kw = {k: v for k, v in kw.items() if k in {"namespace", "clock", "shards"}}
        self._sync = Batcher(sync_client, handoff=False, **inspect_kw)
        self.records, self.keys, self.shards = self._sync.records, self._sync.keys, self._sync.shards
        self.layout, self.scripts, self.client = self._sync.layout, self._sync.scripts, sync_client
        self.registry = self.aio.core.registry
        self.dispatcher = self.aio.dispatcher if handoff else None

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.aio, name)
        if not callable(method):
            return method
        return lambda *a, **kw: self._loop.run(method(*a, **kw))

    @property
    def on_cut(self) -> Any:
        return self.aio.on_cut

    @on_cut.setter
    def on_cut(self, hook: Any) -> None:
        self.aio.on_cut = hook

    @property
    def chunk_size(self) -> int:
        return self.aio.core.chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int) -> None:
        self.aio.core.chunk_size = value

    def close(self) -> None:
        self._loop.run(self.aio.aclose())
