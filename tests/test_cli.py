"""The `distbatch` command: every subcommand answers --help; emit, stats and triggers work."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from distbatch import Batcher
from distbatch.cli import main as cli

from .redis_server import RedisServer


def _all_commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _all_commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [(), *_all_commands(cli)])
def test_help_everywhere(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_emit_stats_triggers(redis_server: RedisServer, namespace: str) -> None:
    args = ["--redis-url", redis_server.url, "--namespace", namespace]
    b = Batcher.from_url(redis_server.url, namespace=namespace)
    b.register("d", version="v1", source="s", handler="m.h",
               batch={"count": 3, "window": "1h", "key": "k"})
    runner = CliRunner()
    one = runner.invoke(cli, ["emit", "s", '{"k": "a"}', *args])
    assert one.exit_code == 0, one.output
    assert json.loads(one.output) == {"events": 1, "results_buffered": 1, "batches_fired": 0}
    many = runner.invoke(cli, ["emit", "s", *args], input='{"k": "a"}\n{"k": "a"}\n\n{"k": "b"}\n')
    assert json.loads(many.output) == {"events": 3, "results_buffered": 2, "batches_fired": 1}
    bad = runner.invoke(cli, ["emit", "s", *args], input='{"k": "a"}\nnot json\n')
    assert bad.exit_code != 0 and "line 2" in bad.output
    stats = json.loads(runner.invoke(cli, ["stats", "--json", *args]).output)
    d = stats["bindings"]["d@v1"]
    assert d["open_buffers_now"] == 1 and d["events_in_total"] == 4 and d["batches_count_total"] == 1
    assert 0 < d["next_window_closes_in_ms"] <= 3_600_000
    assert stats["batches_ready_now"] == 1 and stats["batches_dead_now"] == 0
    human = runner.invoke(cli, ["stats", *args]).output
    assert "batches ready 1" in human and "d@v1" in human and "in=4" in human
    listed = json.loads(runner.invoke(cli, ["triggers", "list", *args]).output)
    assert listed["d@v1"]["batch"] == {"count": 3, "window_ms": 3_600_000, "key": "k",
                                       "expire_action": "fire_partial"}


def test_dead_commands_with_nothing_dead(redis_server: RedisServer, namespace: str) -> None:
    args = ["--redis-url", redis_server.url, "--namespace", namespace]
    runner = CliRunner()
    purge = runner.invoke(cli, ["dead", "purge", "--all", *args])
    assert purge.exit_code == 0 and "purged 0 dead batches" in purge.output
    replay = runner.invoke(cli, ["dead", "replay", "--all", *args])
    assert replay.exit_code == 0 and replay.output == ""
    assert runner.invoke(cli, ["dead", "purge", *args]).exit_code == 2  # neither ids nor --all


def test_bad_durations_name_the_option() -> None:
    result = CliRunner().invoke(cli, ["worker", "--lease", "soon"])
    assert result.exit_code == 2 and "'soon'" in result.output


def test_demo_runs_whole_pipeline_on_fakeredis() -> None:
    result = CliRunner().invoke(cli, ["demo", "--events", "600", "--rate", "20000", "--window", "100ms"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["events_in"] == summary["events_delivered"] == 600
    assert summary["batches_count"] + summary["batches_expired"] >= 60
    # the progress counts deliveries, and its last line (on stderr, before the JSON summary on
    # stdout; click mixes both into .output) agrees with the summary
    lines = result.output[: result.output.index("{")].replace("\r", "\n").strip().splitlines()
    assert lines and "delivered 600" in lines[-1], lines[-3:]


def test_stats_watch_shows_rates_live(redis_server: RedisServer, namespace: str) -> None:
    """--watch refreshes: rates are the difference between two reads; --json gives a line each."""
    from distbatch.watch import watch

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("w", version="v1", source="s", handler="m.h",
               batch={"count": 4, "window": "1h", "key": "k"})
    lines: list[str] = []

    def between_ticks(seconds: float) -> None:  # traffic while the view sleeps (a little)
        b.emit_many("s", [{"k": str(i % 2)} for i in range(8)])
        time.sleep(0.005)  # the rates are over Redis' clock, in ms: some time must pass

    watch(b, 0.5, 3, True, lines.append, sleep=between_ticks)
    ticks = [json.loads(line) for line in lines]
    assert len(ticks) == 3 and "events_in_per_s" not in ticks[0]["bindings"]["w@v1"]
    assert [t["bindings"]["w@v1"].get("events_in_total", 0) for t in ticks] == [0, 8, 16]
    assert all(t["bindings"]["w@v1"]["events_in_per_s"] > 0 for t in ticks[1:])
    assert ticks[2]["batches_ready_now"] == 4
    from distbatch.watch import snapshot

    earlier = snapshot(b, None)
    earlier["server_time_ms"] += 60_000  # a read no earlier than this one (the same ms, or a clock step)
    assert "events_in_per_s" not in snapshot(b, earlier)["bindings"]["w@v1"]  # no rate known, not 0
    human = CliRunner().invoke(cli, ["stats", "--watch", "--count", "1", "--redis-url",
                                     redis_server.url, "--namespace", namespace])
    assert human.exit_code == 0, human.output
    assert "w@v1" in human.output and "dead 0" in human.output and "ready 4" in human.output


def _failed_cleanly(result) -> str:
    """Exit status 1 and one `Error: ...` line: no traceback (CliRunner keeps an uncaught
    exception in `result.exception`; a clean failure is click's SystemExit)."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.output.startswith("Error: "), result.output
    return str(result.output)


@pytest.mark.parametrize("argv, said", [
    (["emit", "s", "{}", "--redis-url", "redis://127.0.0.1:1/0"], "cannot reach Redis"),
    (["stats", "--redis-url", "redis//127.0.0.1:1/0"], "redis_url='redis//127.0.0.1:1/0' is not a Redis URL"),
    (["triggers", "list", "--redis-url", "redis://:s3cret@127.0.0.1:x/0"], "redis_url='redis://:***@"),
    (["dead", "list", "--redis-url", "redis://127.0.0.1:1/0", "--namespace", "my ns"], "namespace='my ns'"),
    (["emit", "s", "{}", "--queue-url", "redi://q"], "queue_url='redi://q'"),
    (["stats", "--redis-url", "redis+cluster://127.0.0.1:1/"], "cannot use the Redis Cluster"),
    (["stats", "--redis-url", "redis://default:s3cret/YmFy+cX@127.0.0.1:6379/0"], "redis_url='redis://default:***@"),
    (["stats", "--redis-url", "redis://:s3cret#2@127.0.0.1/0"], "redis_url='redis://:***@"),
    (["stats", "--redis-url", "redis://127.0.0.1:x/0?password=s3cret"], "password=***"),
])
def test_mistakes_and_an_unreachable_redis_get_one_clear_line(argv: list[str], said: str) -> None:
    out = _failed_cleanly(CliRunner().invoke(cli, argv))
    assert said in out and "s3cret" not in out and "YmFy" not in out


def test_emit_says_exactly_what_was_stored_when_a_line_fails(redis_server: RedisServer,
                                                            namespace: str) -> None:
    """Lines are sent in chunks as they are read: a bad line after the first chunk must not be
    reported as "nothing was stored", and must be named by its line, not its place in a chunk."""
    args = ["--redis-url", redis_server.url, "--namespace", namespace, "--chunk", "100"]
    b = Batcher.from_url(redis_server.url, namespace=namespace)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 5000, "window": "1h"})
    good = "".join(json.dumps({"i": i}) + "\n" for i in range(250))
    for bad, why in (("[1]\n", "must be a mapping"), ('{"x": NaN}\n', "NaN is not JSON"),
                     ('{"x": 1e999}\n', "out of range")):
        out = _failed_cleanly(CliRunner().invoke(cli, ["emit", "s", *args], input=good + bad))
        assert out.startswith("Error: line 251: ") and why in out, out
        assert "nothing from line 201 on was stored (the 200 event(s) of the lines before it were)" in out
        assert [e.payload["i"] for e in b.drop("d@v1")] == list(range(200))  # what Redis holds
        b.register("d", version="v1", source="s", handler="m.h", batch={"count": 5000, "window": "1h"})
    first = _failed_cleanly(CliRunner().invoke(cli, ["emit", "s", "[1]", *args]))
    assert first.startswith("Error: line 1: ") and "nothing from line 1 on was stored" in first
