"""The `distbatch` command: every subcommand answers --help; emit, stats and triggers work."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from distbatch import Batcher, EmitResult
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
    Batcher.from_url(redis_server.url, namespace=namespace).register(  # a namespace in use: no hint
        "d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    runner = CliRunner()
    purge = runner.invoke(cli, ["dead", "purge", "--all", *args])
    assert purge.exit_code == 0 and "purged 0 dead batches" in purge.output
    replay = runner.invoke(cli, ["dead", "replay", "--all", *args])
    assert replay.exit_code == 0 and replay.output == ""
    assert runner.invoke(cli, ["dead", "purge", *args]).exit_code == 2  # neither ids nor --all
    for command in ("replay", "purge"):  # both: the ids were dropped unseen, a typo'd one too
        both = runner.invoke(cli, ["dead", command, "--all", "no-such-id", *args])
        assert both.exit_code == 2 and "not both (ids given: no-such-id)" in both.output, both.output


def test_bad_durations_name_the_option() -> None:
    result = CliRunner().invoke(cli, ["worker", "--lease", "soon"])
    assert result.exit_code == 2 and "'soon'" in result.output


def test_demo_runs_whole_pipeline_on_fakeredis() -> None:
    result = CliRunner().invoke(cli, ["demo", "--events", "600", "--rate", "20000", "--window", "100ms"],
                                env={"DISTBATCH_REDIS_URL": None})  # none given: the embedded one
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
    (["emit", "s", " ", "--redis-url", "redis://127.0.0.1:1/0"], "PAYLOAD is empty"),  # stored 0, exit 0
    # redis-py passed these on to the connection: a TypeError traceback at its first command
    (["stats", "--redis-url", "redis://127.0.0.1:1/0?socket_timout=5"], "'socket_timout' is no option"),
    (["stats", "--redis-url", "redis://127.0.0.1:1/0?ssl_cert_reqs=required"], "need rediss://"),
    (["stats", "--redis-url", "redis+cluster://127.0.0.1:1/0?socket_timout=5"], "'socket_timout' is no"),
    (["sweeper", "--redis-url", "redis://:s3cret@[::1/0"], "Invalid IPv6 URL"),  # a ValueError traceback
    # a user alone was masked as a password (every "u" of the message), and every quoted word too:
    (["stats", "--redis-url", "redis://u@127.0.0.1:1/0?socket_timout=5"], "'socket_timout' is no option"),
    (["stats", "--redis-url", "redis://:s3cret@127.0.0.1:x/0"], "as 'x'"),  # the bad port named
    # a TLS key's passphrase was shown as it is
    (["stats", "--redis-url", "rediss://127.0.0.1:1/0?ssl_password=s3cret-pass&bogus=1"], "ssl_password=***"),
    # a password with a '/' ended the host: a piece of it was quoted as the path, or as the host
    (["stats", "--redis-url", "redis://:pa@ss/s3cretPart#z@127.0.0.1:1/0"], "percent-encode them"),
    (["worker", "--redis-url", "redis://alice:Abc@s3cretHost/s3cretPath@127.0.0.1:1/0"], "%2F"),
    # ... but an '@' in a query value is no password's
    (["stats", "--redis-url", "redis://127.0.0.1:1/0?client_name=app@host:7000"], "cannot reach Redis"),
    (["stats", "--redis-url", "rediss://127.0.0.1:1/0?ssl_ca_certs=/no/such+ca.pem"],
     "ssl_ca_certs='/no/such ca.pem' does not exist"),  # read as redis-py reads it: '+' is a space
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
    first = _failed_cleanly(CliRunner().invoke(cli, ["emit", "s", "[1]", *args]))  # the argument: no lines
    assert first.startswith("Error: PAYLOAD: ") and first.rstrip().endswith("; nothing was stored"), first


@pytest.mark.parametrize("argv, said", [
    (["worker", "--path", "/nonexistent/handlers"], "'/nonexistent/handlers' does not exist"),  # was taken
    (["serve", "--port", "70000", "--insecure-no-auth"], "70000 is not in the range 1<=x<=65535"),
    (["worker", "--metrics-port", "70000"], "70000 is not in the range"),
    (["sweeper", "--metrics-port", "0"], "0 is not in the range"),
    (["worker", "--lease", "1ms"], "--lease='1ms' must be from 1s to 1d"),
    (["worker", "--lease", "2d"], "must be from 1s to 1d"),
    (["emit", "s", "--chunk", "0"], "0 is not in the range"),
    (["stats", "--count", "3"], "use it with --watch"),
    (["stats", "--interval", "5s"], "--interval is --watch's refresh period"),  # taken in silence before
    (["worker", "--metrics-insecure-no-auth"], "an option of --metrics-port, which is not given"),
    (["sweeper", "--token-file", "/dev/null"], "an option of --metrics-port, which is not given"),
    (["serve", "--max-events", "0"], "Invalid value for '--max-events'"),  # was max_events=0, exit 1
    (["demo", "--count", "2000"], "2000 is not in the range 1<=x<=1024"),
    (["demo", "--window", "abc"], "--window='abc' is not a duration"),  # it named batch.window
    (["demo", "--rate", "nan"], "'nan' is not a finite number"),  # passed the range: threads died, a hang
    (["demo", "--rate", "inf"], "'inf' is not a finite number"),
])
def test_an_out_of_range_option_is_named_before_anything_runs(argv: list[str], said: str) -> None:
    argv = [*argv, *(["--redis-url", "redis://127.0.0.1:1/0"] if argv[0] != "demo" else [])]  # never 6379
    """`serve --port 70000` once listened on 70000 mod 65536; `--metrics-port 70000` raised an
    OverflowError traceback; `--lease 1ms` lost every healthy batch; `--chunk 0`, `--count` without
    `--watch` and `demo --count 2000` (past the buffer cap: a two-minute wait, then sums that did
    not add up) were taken silently."""
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert said in result.output, result.output


def test_a_database_the_url_cannot_name_is_an_error_not_db_0(redis_server: RedisServer) -> None:
    """`/abc` or `/O` once silently meant database 0 (another app's data); `/99`, past the
    server's databases, a traceback from every command."""
    base = redis_server.url.rsplit("/", 1)[0]
    out = _failed_cleanly(CliRunner().invoke(cli, ["stats", "--redis-url", f"{base}/abc"]))
    assert "redis_url=" in out and "'/abc' names no database" in out
    out = _failed_cleanly(CliRunner().invoke(cli, ["stats", "--redis-url", f"{base}/99"]))
    assert "Redis refused" in out and "DB index is out of range" in out
    assert "the database a URL names (its /N path) is not one that server has" in out


def test_dead_replay_and_purge_of_a_batch_that_is_not_dead_fail(redis_server: RedisServer,
                                                                namespace: str) -> None:
    args = ["--redis-url", redis_server.url, "--namespace", namespace]
    for command in ("replay", "purge"):  # they once said "not dead" / "purged 0" and exited 0
        result = CliRunner().invoke(cli, ["dead", command, "99999", *args])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert result.output.splitlines()[-1].startswith("Error: 1 of the batches named are not dead")


@contextlib.contextmanager
def _a_port_taken() -> Iterator[int]:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_the_metrics_port_taken_is_one_clear_line(redis_server: RedisServer) -> None:
    with _a_port_taken() as port:
        out = _failed_cleanly(CliRunner().invoke(cli, [
            "sweeper", "--redis-url", redis_server.url, "--metrics-port", str(port),
            "--metrics-insecure-no-auth"]))
    assert f"--metrics-port {port}" in out and "in use" in out


def test_serve_on_a_port_taken_is_one_clear_line(redis_server: RedisServer) -> None:
    """uvicorn bound it after start-up had begun: its own ERROR line, then exit status 3."""
    with _a_port_taken() as port:
        out = _failed_cleanly(CliRunner().invoke(cli, [
            "serve", "--redis-url", redis_server.url, "--port", str(port), "--insecure-no-auth"]))
    assert f"--port {port} on --host 127.0.0.1" in out and "in use" in out


def _one_dead(b: Batcher) -> EmitResult:
    """A binding with one try, and one batch of it gone dead."""
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"},
               retry={"attempts": 1})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None
    claim = b.records.claim([r.batch.id], 10_000)
    assert claim is not None
    b.records.fail(r.batch.id, claim.token, "boom", None)
    return r


def test_dead_replay_of_a_batch_named_twice_replays_it_once_and_succeeds(redis_server: RedisServer,
                                                                          namespace: str) -> None:
    """It said "replayed", then "not dead", and failed: each name was counted as a batch."""
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    r = _one_dead(b)
    result = CliRunner().invoke(cli, ["dead", "replay", r.batch.id, r.batch.id,
                                      "--redis-url", redis_server.url, "--namespace", namespace])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{r.batch.id}: replayed"]


@pytest.mark.parametrize("command", ["worker", "sweeper"])
def test_a_wrong_password_ends_a_long_running_process_with_one_line(command: str, tmp_path) -> None:
    """A wrong password was retried forever ("redis_unavailable ... retrying"), like an outage:
    it is a mistake, said once."""
    import subprocess
    import sys

    from .redis_server import env_with_path

    own = RedisServer().start()
    try:
        redis.Redis.from_url(own.url).config_set("requirepass", "right-password")
        url = own.url.replace("redis://", "redis://:wrong-password@")
        done = subprocess.run([sys.executable, "-m", "distbatch.cli", command, "--redis-url", url],
                              env=env_with_path(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert "Error: Redis refused the login (the user or password in the URL)" in done.stderr
        assert "Traceback" not in done.stderr and "wrong-password" not in done.stderr
    finally:
        own.cleanup()


def test_a_sweeper_waiting_for_redis_stops_on_sigterm() -> None:
    """SIGTERM (what Compose and Kubernetes send) was ignored while Redis was out of reach at
    start: the sweeper kept retrying until SIGKILL."""
    import signal
    import subprocess
    import sys

    from .redis_server import env_with_path, free_port

    proc = subprocess.Popen([sys.executable, "-m", "distbatch.cli", "sweeper", "--redis-url",
                             f"redis://127.0.0.1:{free_port()}/0"], env=env_with_path(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        while "redis_unavailable" not in proc.stderr.readline():
            assert time.monotonic() < deadline and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stats_counts_the_events_a_drop_returned(redis_server: RedisServer, namespace: str) -> None:
    """The text line once left dropped events out: in=2 delivered=0 discarded=0 overflowed=0."""
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 9, "window": "1h"})
    b.emit_many("s", [{"n": 1}, {"n": 2}])
    assert len(b.drop("d@v1")) == 2
    out = CliRunner().invoke(cli, ["stats", "--redis-url", redis_server.url, "--namespace", namespace])
    assert out.exit_code == 0, out.output
    assert "in=2 delivered=0 discarded=0 overflowed=0 dropped=2" in out.output, out.output


def test_a_purged_dead_batch_is_counted_and_a_dropped_binding_keeps_its_source(
        redis_server: RedisServer, namespace: str) -> None:
    """`dead purge` deleted events without a counter, so events in = delivered + ... stopped
    adding up; and a dropped binding showed source=None though its definition is kept."""
    from distbatch.executor import Executor
    from distbatch.handlers import HandlerResolver

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="tests.handlers.boom",
               batch={"count": 3, "window": "1h"}, retry={"attempts": 1})
    (*_, r) = b.emit_many("s", [{"n": i} for i in range(3)])
    assert r.batch is not None
    executor = Executor(b.records, HandlerResolver(["tests.handlers"]), 10_000)
    executor.run(b.records.claim([r.batch.id], 10_000))
    assert b.records.count("dead") == 1
    b.drop("d@v1")
    out = CliRunner().invoke(cli, ["dead", "purge", r.batch.id, "--redis-url", redis_server.url,
                                   "--namespace", namespace])
    assert out.exit_code == 0, out.output
    stats = CliRunner().invoke(cli, ["stats", "--redis-url", redis_server.url, "--namespace", namespace])
    assert "in=3 delivered=0 discarded=0 overflowed=0 dropped=0 purged=3" in stats.output, stats.output
    assert "(dropped) source=s " in stats.output, stats.output


def test_emit_from_stdin_stopped_by_ctrl_c_says_what_was_stored(redis_server: RedisServer,
                                                               namespace: str) -> None:
    """Ctrl-C while `emit` read its stdin printed click's `Aborted!` and nothing of the 4 events
    it had already stored."""
    import signal
    import subprocess
    import sys

    from distbatch.stats import collect

    from .redis_server import env_with_path

    b = Batcher.from_url(redis_server.url, namespace=namespace)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 100, "window": "1h"})
    proc = subprocess.Popen([sys.executable, "-m", "distbatch.cli", "emit", "s", "--chunk", "2",
                             "--redis-url", redis_server.url, "--namespace", namespace],
                            env=env_with_path(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None
        proc.stdin.write("".join(f'{{"n": {i}}}\n' for i in range(5)))  # two chunks and a line
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while collect(b)["bindings"]["d@v1"].get("events_in_total", 0) < 4:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert json.loads(out) == {"events": 4, "results_buffered": 4, "batches_fired": 0,
                                   "interrupted": True}
        assert "the 4 event(s) before it were stored; nothing from line 5 on was" in err, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_demo_stays_out_of_a_live_namespace(redis_server: RedisServer, namespace: str) -> None:
    """`DISTBATCH_REDIS_URL=... DISTBATCH_NAMESPACE=prod distbatch demo` (a shell set up for the
    fleet, `docker compose exec worker distbatch demo`) ran the demo in the live namespace: its
    fake events were batched for the real binding, and its worker gave the real batches back.
    Refused now, before anything is written."""
    live = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    live.register("pr-digest", version="v1", source="pr.merged", handler="m.h",
                  batch={"count": 3, "window": "1h", "key": "repo"})
    env = {"DISTBATCH_REDIS_URL": redis_server.url, "DISTBATCH_NAMESPACE": namespace}
    for argv in (["demo"], ["demo", "--redis-url", redis_server.url, "--namespace", namespace]):
        result = CliRunner().invoke(cli, argv, env=env)
        assert result.exit_code == 1
        assert "holds bindings the demo did not make (pr-digest@v1)" in result.output
    assert live.counters().get("events_in:pr-digest@v1", 0) == 0 and set(live.bindings()) == {"pr-digest@v1"}


def test_the_demo_runs_again_with_another_config_on_a_real_redis(redis_server: RedisServer,
                                                                 namespace: str) -> None:
    """Its binding was always pr-digest@demo, dropped at the end with its config kept: a second
    run with another --count failed with `binding_conflict`."""
    for count in ("10", "7"):
        result = CliRunner().invoke(cli, ["demo", "--redis-url", redis_server.url, "--namespace", namespace,
                                          "--events", "200", "--rate", "20000", "--count", count])
        assert result.exit_code == 0, result.output


def test_a_demo_that_could_not_deliver_everything_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """It exited 1 with no word after a summary of 0 delivered (a window longer than it waited)."""
    import distbatch.demo

    def short(*_: object, **__: object) -> dict[str, object]:
        return {"events_in": 10, "events_delivered": 0, "seconds": 120.0, "interrupted": False}

    monkeypatch.setattr(distbatch.demo, "run_demo", short)
    result = CliRunner().invoke(cli, ["demo"], env={"DISTBATCH_REDIS_URL": None})
    assert result.exit_code == 1 and "Error: 10 events in, 0 delivered within 120.0s" in result.output


def test_a_mistake_in_the_queue_url_is_named_as_the_queue_urls(redis_server: RedisServer, namespace: str,
                                                               tmp_path: Path) -> None:
    """A wrong password in --queue-url only (the --redis-url fine): the worker logged
    worker_started, then `cannot reach Redis: AuthenticationError`, naming neither the URL at
    fault nor that the server was reached and refused the login."""
    import subprocess
    import sys

    from distbatch.testing import env_with_path

    locked = RedisServer().start()
    try:
        redis.Redis.from_url(locked.url).config_set("requirepass", "right-password-0123456789")
        queue = locked.url.replace("redis://", "redis://:wrong-password@")
        out = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--burst", "--redis-url",
                              redis_server.url, "--queue-url", queue, "--namespace", namespace],
                             env=env_with_path(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 1, out.stderr
        assert "Error: Redis refused the login" in out.stderr and "--queue-url:" in out.stderr
        assert "worker_started" not in out.stderr
    finally:
        locked.cleanup()


@pytest.mark.parametrize("argv", [["stats", "--json"], ["triggers", "list"], ["dead", "list"]])
def test_a_look_at_a_namespace_with_no_binding_says_so(redis_server: RedisServer, namespace: str,
                                                       argv: list[str]) -> None:
    """`dead list` on a typo'd --namespace printed nothing, exactly as "no dead batch" does."""
    import subprocess
    import sys

    from distbatch.testing import env_with_path

    Batcher.from_url(redis_server.url, namespace=namespace).register(
        "d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    for ns, hint in ((namespace + "x", True), (namespace, False)):
        out = subprocess.run([sys.executable, "-m", "distbatch.cli", *argv, "--redis-url", redis_server.url,
                              "--namespace", ns], env=env_with_path(), capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        said = f"namespace '{ns}': no binding is registered in it (a typo'd --namespace?"
        assert (said in out.stderr) is hint
        if argv[0] != "dead":
            json.loads(out.stdout)  # stdout stays what scripts read


def test_plain_stats_says_no_sweeper_cut_an_overdue_window(redis_server: RedisServer, namespace: str) -> None:
    """`sweepers_live` and the overdue time were only in --json and --watch, and the plain view
    showed an overdue window as `next_close=-289.5s`: the first command run when nothing fires."""
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("w", version="v1", source="s", handler="m.h", batch={"count": 10, "window": "100ms"})
    b.emit("s", {})
    time.sleep(1.3)
    result = CliRunner().invoke(cli, ["stats", "--redis-url", redis_server.url, "--namespace", namespace])
    assert result.exit_code == 0, result.output
    assert "sweepers live 0; a window overdue by 1." in result.output
    assert "next_close=overdue 1." in result.output


def test_dead_show_and_replay_say_where_a_batch_that_is_not_dead_is(redis_server: RedisServer,
                                                                    namespace: str) -> None:
    """`dead show garbage` said "batch 'garbage' is not dead", as for a batch running now."""
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"})
    ready, running = (r.batch.id for r in b.emit_many("s", [{"n": 1}, {"n": 2}]) if r.batch)
    assert b.records.claim([running], 10_000) is not None
    args = ["--redis-url", redis_server.url, "--namespace", namespace]
    said = {bid: CliRunner().invoke(cli, ["dead", "show", bid, *args]).output
            for bid in (ready, running, "garbage")}
    assert f"batch {ready!r} is not dead: ready, waiting for a worker" in said[ready]
    assert f"batch {running!r} is not dead: running on a worker now" in said[running]
    assert f"batch 'garbage' is not a batch of namespace {namespace!r}" in said["garbage"]
    out = CliRunner().invoke(cli, ["dead", "replay", running, *args]).output
    assert f"{running}: not dead: running on a worker now" in out


def test_a_dead_payload_holding_nan_is_shown_as_json_every_reader_takes(redis_server: RedisServer,
                                                                       namespace: str) -> None:
    """The library stores NaN and Infinity (only the CLI's and HTTP's doors refuse them), and
    `dead show` printed `"v": NaN, "w": Infinity`, as did /api/dead/<id> on a payload orjson
    could not write: text no JSON reader but Python's takes (jq, a browser's JSON.parse). Such a
    float is shown as the string "NaN" / "Infinity" / "-Infinity" now."""
    from distbatch import strictjson
    from distbatch.records import Outcome

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"},
               retry={"attempts": 1})
    (r,) = b.emit("s", {"v": float("nan"), "w": [float("inf"), -float("inf"), 1.5], "raw": b"\x00"})
    assert r.batch is not None
    claim = b.records.claim([r.batch.id], 10_000)
    assert claim is not None and b.records.fail(r.batch.id, claim.token, "boom", None) is Outcome.DEAD
    args = ["--redis-url", redis_server.url, "--namespace", namespace]
    shown = CliRunner().invoke(cli, ["dead", "show", r.batch.id, *args])
    assert shown.exit_code == 0, shown.output
    (event,) = strictjson.loads(shown.output)["events"]  # refuses NaN, as jq does
    assert event["payload"]["v"] == "NaN" and event["payload"]["w"] == ["Infinity", "-Infinity", 1.5]
    listed = CliRunner().invoke(cli, ["dead", "list", *args])
    assert strictjson.loads(listed.output.splitlines()[0])["id"] == r.batch.id
    from distbatch.serve.events import inspection_response

    detail = {"events": [{"payload": {"v": float("nan"), "raw": b"\x00"}}], 7: -float("inf")}
    assert strictjson.loads(inspection_response(detail).body) == {
        "events": [{"payload": {"v": "NaN", "raw": "b'\\x00'"}}], "7": "-Infinity"}
    # a foreign emitter's float map key beside a str key of the name it is shown by: both shown
    shown = strictjson.loads(strictjson.dumps({float("nan"): 1, "NaN": 2}))
    assert shown == {"NaN (a float key)": 1, "NaN": 2}


@pytest.mark.parametrize("argv", [["dead", "replay", "--all"], ["dead", "purge", "--all"],
                                  ["emit", "s", "{}"]])
def test_commands_on_a_typod_namespace_write_nothing(redis_server: RedisServer, namespace: str,
                                                     argv: list[str]) -> None:
    """`dead purge --all` on a typo'd --namespace said "purged 0 dead batches", exit 0, and like
    `dead replay --all` and a refused `emit` stored a layout for the namespace that was never meant."""
    result = CliRunner().invoke(cli, [*argv, "--redis-url", redis_server.url, "--namespace", namespace])
    assert redis.Redis.from_url(redis_server.url).keys(f"*{namespace}*") == []
    if argv[0] == "dead":
        assert result.exit_code == 0, result.output
        assert f"namespace '{namespace}': no binding is registered in it" in result.output  # stderr, mixed in
    else:
        assert result.exit_code == 1 and "no trigger is bound to source 's'" in result.output


def test_a_variable_set_empty_is_refused_not_taken_for_unset() -> None:
    """An unset `${REDIS_URL}` in a compose file is an empty DISTBATCH_REDIS_URL: click took it for
    no variable, and the process used 127.0.0.1:6379 without a word."""
    result = CliRunner().invoke(cli, ["stats"], env={"DISTBATCH_REDIS_URL": ""})
    assert result.exit_code == 2 and "DISTBATCH_REDIS_URL is set but empty" in result.output, result.output
    # given on the command line, the default's value included, the variable is not read at all
    result = CliRunner().invoke(cli, ["stats", "--namespace", "distbatch", "--redis-url", "redis://127.0.0.1:1/0"],
                                env={"DISTBATCH_NAMESPACE": ""})
    assert "set but empty" not in result.output and "cannot reach Redis" in result.output, result.output


def test_a_read_only_acl_user_can_look(redis_server: RedisServer, namespace: str) -> None:
    """`stats` and `triggers list` as a user with +@read only: "no permissions to run the 'multi'
    command" (the registry was read in a transaction)."""
    client = redis.Redis.from_url(redis_server.url)
    Batcher(client, namespace=namespace).register("d", version="v1", source="s", handler="m.h",
                                                   batch={"count": 3, "window": "1h"})
    user = f"ro-{namespace}"
    client.acl_setuser(user, enabled=True, passwords=["+ro-password-123"], keys=["*"],
                       commands=["+@read", "+time"])  # as README says
    try:
        url = redis_server.url.replace("redis://", f"redis://{user}:ro-password-123@")
        for command in (["stats", "--json"], ["triggers", "list"]):
            result = CliRunner().invoke(cli, [*command, "--redis-url", url, "--namespace", namespace])
            assert result.exit_code == 0, result.output
            assert "d@v1" in result.output
    finally:
        client.acl_deluser(user)


def test_the_demo_runs_as_the_acl_user_the_readme_names(redis_server: RedisServer, namespace: str) -> None:
    client = redis.Redis.from_url(redis_server.url)
    user = f"app-{namespace}"
    client.acl_setuser(user, enabled=True, passwords=["+app-password-123"], keys=["*"], channels=["*"],
                       commands=["+@read", "+@write", "+@scripting", "+@pubsub", "+@transaction",
                                 "+@connection", "+@keyspace", "+time"])
    try:
        url = redis_server.url.replace("redis://", f"redis://{user}:app-password-123@")
        result = CliRunner().invoke(cli, ["demo", "--redis-url", url, "--namespace", namespace,
                                          "--events", "200", "--rate", "20000"])
        assert result.exit_code == 0 and "NoPermission" not in result.output, result.output
    finally:
        client.acl_deluser(user)


def test_dead_show_and_replay_of_an_id_naming_no_shard_say_so(redis_server: RedisServer,
                                                              namespace: str) -> None:
    """`dead replay <dead id> 7.1` replayed the first, then ended on a bare `Error: '7.1'`, before
    the replayed batch was handed to the workers (a sweeper's nudge only, seconds later)."""
    b = Batcher.from_url(redis_server.url, namespace=namespace)
    r = _one_dead(b)
    b.client.delete(f"rq:queue:{b.keys.queue_name}")  # the emit's ticket, long taken
    args = ["--redis-url", redis_server.url, "--namespace", namespace]
    out = CliRunner().invoke(cli, ["dead", "replay", r.batch.id, "7.1", *args]).output
    assert f"{r.batch.id}: replayed" in out and "7.1: not a batch of namespace" in out, out
    assert out.rstrip().endswith("Error: 1 of the batches named are not dead (see `distbatch dead list`)")
    assert b.client.llen(f"rq:queue:{b.keys.queue_name}") == 1  # handed off
    shown = CliRunner().invoke(cli, ["dead", "show", "7.1", *args]).output
    assert "batch '7.1' is not a batch of namespace" in shown, shown


def test_a_queue_user_without_write_permission_is_said_so(redis_server: RedisServer,
                                                          namespace: str) -> None:
    """A worker whose --queue-url user may only read exited with RQ's bare NoPermissionError,
    naming neither the option nor what the user needs."""
    client = redis.Redis.from_url(redis_server.url)
    user = f"rq-ro-{namespace}"
    client.acl_setuser(user, enabled=True, passwords=["+rq-ro-password-1"], keys=["*"], channels=["*"],
                       commands=["+@read", "+@connection", "+time"])
    try:
        queue = redis_server.url.replace("redis://", f"redis://{user}:rq-ro-password-1@")
        result = CliRunner().invoke(cli, ["worker", "--burst", "--redis-url", redis_server.url,
                                          "--namespace", namespace, "--queue-url", queue])
        assert result.exit_code == 1, result.output
        last = result.output.strip().splitlines()[-1]
        assert "NoPermissionError" in last and "--queue-url" in last and "ACL users" in last, last
        assert "rq-ro-password-1" not in result.output
    finally:
        client.acl_deluser(user)


def test_emit_of_one_payload_refused_speaks_of_it_not_of_lines(redis_server: RedisServer,
                                                                namespace: str) -> None:
    """`distbatch emit SOURCE PAYLOAD` refused by Redis (an ACL that may only read) said "the chunk
    began at line 1, and the 0 event(s) before it were stored", words for stdin's lines."""
    client = redis.Redis.from_url(redis_server.url)
    Batcher(client, namespace=namespace).register("d", version="v1", source="s", handler="m.h",
                                                  batch={"count": 5, "window": "1h"})
    user = f"look-{namespace}"
    client.acl_setuser(user, enabled=True, passwords=["+pw-pw-pw"], keys=["*"],
                       commands=["+@read", "+@connection"])
    try:
        url = redis_server.url.replace("redis://", f"redis://{user}:pw-pw-pw@")
        out = CliRunner().invoke(cli, ["emit", "s", '{"a": 1}', "--redis-url", url, "--namespace", namespace])
    finally:
        client.acl_deluser(user)
    assert out.exit_code == 1 and out.output.startswith("Error: PAYLOAD: "), out.output
    assert "line" not in out.output, out.output


def test_emit_reading_a_terminal_says_so(redis_server: RedisServer, namespace: str) -> None:
    """`distbatch emit SOURCE` with no PAYLOAD at a terminal waited for lines in silence."""
    import os
    import pty
    import subprocess
    import sys

    from .redis_server import env_with_path

    Batcher.from_url(redis_server.url, namespace=namespace).register(
        "d", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "1h"})
    main_fd, tty = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "distbatch.cli", "emit", "s", "--redis-url",
                             redis_server.url, "--namespace", namespace], stdin=tty, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env_with_path(), text=True)
    try:
        os.write(main_fd, b'{"a": 1}\n\x04')  # a line, then Ctrl-D
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(main_fd)
        os.close(tty)
    assert proc.returncode == 0, err
    assert "reading events for 's' from stdin, one JSON object per line; end with Ctrl-D" in err
    assert json.loads(out)["events"] == 1


def test_redis_url_mistakes_get_a_word_on_what_to_fix(redis_server: RedisServer) -> None:
    """Three a new user makes (the new-user review): a URL with no scheme was told the schemes
    redis-py takes, not a cluster's; `rediss://` to a port that speaks no TLS said only
    `TimeoutError` after 6 s; a URL with no password, to a Redis that asks for one, showed
    redis-py's raw "HELLO must be called with the client already authenticated"."""
    host_port = redis_server.url.removeprefix("redis://").split("/")[0]
    said = CliRunner().invoke(cli, ["triggers", "list", "--redis-url", host_port]).output
    assert "is not a Redis URL" in said and "redis+cluster:// or rediss+cluster://" in said, said
    said = CliRunner().invoke(cli, ["triggers", "list", "--redis-url", f"rediss://{host_port}/0"]).output
    assert "is that server's port a TLS one?" in said, said
    locked = RedisServer().start()
    try:
        redis.Redis.from_url(locked.url).config_set("requirepass", "a-password-0123456789")
        said = CliRunner().invoke(cli, ["triggers", "list", "--redis-url", locked.url]).output
    finally:
        locked.cleanup()
    assert "Redis requires a password, and the URL gives none" in said and "HELLO" not in said, said
