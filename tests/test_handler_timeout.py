"""A handler past its `retry.timeout` is interrupted (`distbatch.handler_timeout`)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from distbatch import Batch, Batcher
from distbatch.errors import HandlerTimeout
from distbatch.executor import Executor, Status
from distbatch.handler_timeout import bounded
from distbatch.handlers import HandlerResolver

calls: list[int] = []


def sleeps(batch: Batch) -> None:
    calls.append(batch.attempt)
    time.sleep(30)


def spins(batch: Batch) -> None:
    calls.append(batch.attempt)
    while True:
        pass


def swallows(batch: Batch) -> None:
    calls.append(batch.attempt)
    try:  # noqa: SIM105 - the catch-all as handlers write it
        time.sleep(30)
    except Exception:
        pass


def quick(batch: Batch) -> None:
    calls.append(batch.attempt)


@pytest.fixture(autouse=True)
def _clear() -> None:
    calls.clear()


def _as_before(before: tuple[Any, float], took: float) -> bool:
    """SIGALRM's handler and timer are what they were (pytest-timeout arms them around each
    test, as RQ does around each job), less the time taken."""
    handler, left = before
    now_left, _ = signal.getitimer(signal.ITIMER_REAL)
    return signal.getsignal(signal.SIGALRM) is handler and (
        now_left == left == 0 or left - took - 0.5 < now_left <= left)


def _alarm() -> tuple[Any, float]:
    return signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)[0]


def _run(batcher: Batcher, handler: str, timeout: str = "200ms") -> tuple[Any, float, str]:
    batcher.register("t", version="v1", source="s", handler=f"{__name__}.{handler}",
                     batch={"count": 1, "window": "1h"}, retry={"timeout": timeout, "attempts": 3})
    (r,) = batcher.emit("s", {})
    assert r.batch is not None
    claim = batcher.records.claim([r.batch.id], 10_000)
    assert claim is not None
    started = time.monotonic()
    result = Executor(batcher.records, HandlerResolver([__name__]), 10_000).run(claim)
    took = time.monotonic() - started
    error = "" if result.status is Status.DELIVERED else batcher.records.raw(r.batch.id)["error"]
    return result, took, error


@pytest.mark.parametrize("handler", ["sleeps", "spins", "swallows"])
def test_a_handler_past_its_timeout_is_interrupted_and_retried(batcher: Batcher, handler: str) -> None:
    before = _alarm()
    result, took, error = _run(batcher, handler)
    assert result.status is Status.RETRY and calls == [1]
    assert took < 5 and "HandlerTimeout" in error and "0.2s" in error
    assert _as_before(before, took)


def test_a_handler_within_its_timeout_leaves_no_alarm_behind(batcher: Batcher) -> None:
    before = _alarm()
    result, took, _ = _run(batcher, "quick", "50ms")
    assert result.status is Status.DELIVERED and _as_before(before, took)
    time.sleep(0.1)  # past the timeout: nothing fires afterwards


def test_an_outer_timer_is_put_back() -> None:
    """RQ arms the same timer around each job; a handler's bound must leave it as it was."""
    fired: list[int] = []
    handler, left = _alarm()
    signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 100)
        with bounded(50):
            pass
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 99 < left <= 100 and signal.getsignal(signal.SIGALRM) is not None and not fired
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # an outer timer due first stays in charge
        with bounded(10_000):
            time.sleep(0.2)
        assert fired == [1]
    finally:
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, max(left - 1, 0))


def test_the_bound_raises_once_and_outside_the_main_thread_not_at_all() -> None:
    with pytest.raises(HandlerTimeout), bounded(50):
        time.sleep(5)
    seen: list[BaseException] = []

    def elsewhere() -> None:
        try:
            with bounded(50):
                time.sleep(0.2)
        except BaseException as exc:  # what a thread would see
            seen.append(exc)

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join()
    assert seen == []
