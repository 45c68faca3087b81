"""`lua/includes/clock.lua`: the server's time in ms, as a number and as the digits a command
takes (`real_ms`, built from TIME's strings so that no Lua number is formatted), on real Redis
and on fakeredis."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import fakeredis
import pytest
import redis

from distbatch.testing import RedisServer

CLOCK = (files("distbatch") / "lua" / "includes" / "clock.lua").read_text()


@pytest.fixture(params=["redis", "fakeredis"])
def any_client(request: pytest.FixtureRequest, redis_server: RedisServer,
               fake_server: fakeredis.FakeServer) -> Any:
    if request.param == "redis":
        return redis.Redis.from_url(redis_server.url)
    return fakeredis.FakeRedis(server=fake_server)


@pytest.mark.parametrize(("seconds", "micros", "ms"), [
    ("1764230400", "0", "1764230400000"), ("1764230400", "5", "1764230400000"),
    ("1764230400", "999", "1764230400000"), ("1764230400", "1000", "1764230400001"),
    ("1764230400", "123456", "1764230400123"), ("1764230400", "999999", "1764230400999"),
    ("9", "70000", "9070"),
])
def test_real_ms_is_times_digits_in_ms(any_client: Any, seconds: str, micros: str, ms: str) -> None:
    shim = "local redis = {call = function() return {ARGV[1], ARGV[2]} end}\n"  # TIME, as given
    got = any_client.eval(shim + CLOCK + "return {real_ms, real_now}", 0, seconds, micros)
    assert got[0].decode() == ms and got[1] == int(ms)


def test_real_ms_matches_the_servers_time(any_client: Any) -> None:
    for _ in range(50):  # whatever microseconds TIME gives
        real_ms, real_now, t = any_client.eval(CLOCK + "return {real_ms, real_now, t}", 0)
        expected = int(t[0]) * 1000 + int(t[1]) // 1000
        assert int(real_ms) == real_now == expected
