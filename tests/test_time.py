"""Time: durations taken exactly, a sweeper that was paused (SIGSTOP, SIGCONT) goes on, `stats`
on a ManualClock."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from distbatch import Batcher, ConfigError, ManualClock
from distbatch.config import parse_duration
from distbatch.stats import collect, top_buffers

from .processes import Procs, wait_for
from .redis_server import RedisServer

H = "tests.handlers.noop"


# 1. A duration of whole milliseconds loses one: float arithmetic, then int() ---------------------

@pytest.mark.parametrize(("window", "ms"), [("1.001s", 1001), ("2.002s", 2002), ("1.023s", 1023),
                                          (timedelta(milliseconds=1001), 1001)], ids=str)
def test_whole_ms_window_is_parsed_exactly(window: object, ms: int) -> None:
    assert parse_duration(window) == ms


def test_window_of_1_001s_has_not_run_out_after_1000ms(batcher: Batcher, clock: ManualClock) -> None:
    batcher.register("t", version="v1", source="src", handler=H,
                     batch={"count": 10, "window": "1.001s"})
    batcher.emit("src", {"n": 0})
    clock.advance(1000)  # 1 ms before the deadline the user asked for
    (result,) = batcher.emit("src", {"n": 1})
    assert result.expired is None, "the window closed 1 ms early: '1.001s' was taken as 1000 ms"


@pytest.mark.parametrize("text", ["1.0001s", "1.5ms", "0.0015s"])
def test_sub_ms_string_duration_is_refused_like_a_sub_ms_timedelta(text: str) -> None:
    # timedelta(microseconds=1500) is refused (window_format: "not a whole number of milliseconds");
    # the same duration as a string is silently truncated
    with pytest.raises(ConfigError) as err:
        parse_duration(text)
    assert err.value.code == "window_format" and text in str(err.value)


@pytest.mark.parametrize("text", ["9" * 5000 + "ms", "1." + "0" * 5000 + "1s"], ids=["int", "frac"])
def test_a_duration_of_many_digits_is_a_config_error(text: str) -> None:
    """Fraction(m.group(1)) raises a bare ValueError past Python's 4300-digit limit (float gave
    inf, refused as 'at most 100 years'): no field named, and the CLI's `_duration`, which
    catches DistbatchError, prints a traceback."""
    with pytest.raises(ConfigError):
        parse_duration(text, "batch.window")


# 2. A sweeper paused (SIGSTOP) and resumed (SIGCONT) stops sweeping --------------------------------

@pytest.fixture
def own_server() -> RedisServer:
    server = RedisServer().start()
    yield server  # type: ignore[misc]
    server.cleanup()


def test_sweeper_keeps_cutting_windows_after_sigstop_sigcont(own_server: RedisServer, tmp_path: Path) -> None:
    ns = "sigcont"
    b = Batcher.from_url(own_server.url, namespace=ns, handoff=False)
    b.register("t", version="v1", source="src", handler=H, batch={"count": 10, "window": "200ms"})
    with Procs(own_server.url, ns, tmp_path) as procs:
        p = procs.sweeper()
        client = redis.Redis.from_url(own_server.url)
        wait_for(lambda: client.zcard(b.keys.sweepers) > 0, 15, "the sweeper to start", procs.logs)
        for _ in range(5):  # a GC pause, a debugger, a container freeze: each past 0.1 s
            os.kill(p.pid, signal.SIGSTOP)
            time.sleep(0.3)
            os.kill(p.pid, signal.SIGCONT)
            time.sleep(0.2)
        time.sleep(0.5)
        assert p.poll() is None, f"the sweeper exited after SIGCONT (rc={p.returncode})\n{procs.logs()}"
        b.emit("src", {"n": 0})
        wait_for(lambda: b.open_buffers() == 0, 3, "the resumed sweeper to cut a 200ms window", procs.logs)


# 3. stats under a ManualClock: 0 ms is taken as "no manual clock", deadlines vs the server clock --

def test_stats_under_manual_clock_zero(one_redis: redis.Redis, namespace: str) -> None:
    clock = ManualClock(0)  # the SPEC's default ManualClock()
    b = Batcher(one_redis, namespace=namespace, clock=clock, handoff=False)
    b.register("t", version="v1", source="src", handler=H, batch={"count": 10, "window": "10s"})
    b.emit("src", {"n": 0})
    stats = collect(b)
    assert stats["oldest_overdue_ms"] == 0  # nothing is overdue: the window closes at 10 s
    assert stats["bindings"]["t@v1"]["next_window_closes_in_ms"] == 10_000
    (top,) = top_buffers(b, "t@v1")
    assert top["age_ms"] == 0 and top["closes_in_ms"] == 10_000


def test_stats_next_window_closes_in_is_on_the_window_clock(one_redis: redis.Redis, namespace: str) -> None:
    clock = ManualClock(1_000_000)
    b = Batcher(one_redis, namespace=namespace, clock=clock, handoff=False)
    b.register("t", version="v1", source="src", handler=H, batch={"count": 10, "window": "10s"})
    b.emit("src", {"n": 0})
    clock.advance("2s")
    assert collect(b)["bindings"]["t@v1"]["next_window_closes_in_ms"] == 8_000


