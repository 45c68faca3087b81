"""Mistakes a user easily makes get a clear word, never silence; bad input loses nothing."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import redis
import redis.asyncio
from click.testing import CliRunner

from distbatch import Batcher, ConfigError, EmitError, PayloadError
from distbatch.cli import main as cli
from distbatch.testing import RedisServer, env_with_path, free_port


def test_emitting_to_an_unbound_source_warns_once(batcher: Batcher, caplog: pytest.LogCaptureFixture) -> None:
    batcher.register("d", version="v1", source="orders", handler="m.h", batch={"count": 2, "window": "1h"})
    with caplog.at_level(logging.WARNING, "distbatch"):
        assert batcher.emit("ordres", {"n": 1}) == []
        assert batcher.emit("ordres", {"n": 2}) == []
    warnings = [m for m in caplog.messages if "source_unbound" in m]
    assert len(warnings) == 1 and "'ordres'" in warnings[0]


def test_ever_new_unbound_sources_keep_the_warnings_bounded(batcher: Batcher,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A caller that makes up source names (a bug, or a client of `serve`) set the log's rate: a
    warning per name, each request (a review measured 5,000 lines from 5,000 requests). Now at
    most 20 lines a minute per batcher, none longer than a line, and the process keeps no more
    than the latest names."""
    batcher.register("d", version="v1", source="orders", handler="m.h", batch={"count": 2, "window": "1h"})
    with caplog.at_level(logging.WARNING, "distbatch"):
        for i in range(3000):
            assert batcher.emit(f"nobody-{i}", {"n": i}) == []
        assert batcher.emit_many("x" * 100_000, [{"n": 1}]) == []
    warnings = [m for m in caplog.messages if "source_unbound" in m]
    assert len(warnings) == 20 and max(len(m) for m in warnings) < 400, len(warnings)
    assert len(batcher.core._warned_sources) <= 1024
    batcher.core._unbound_lines._began = -1e9  # a minute on: a source left out is named then
    with caplog.at_level(logging.WARNING, "distbatch"):
        caplog.clear()
        assert batcher.emit("nobody-2999", {"n": 1}) == []
    (line,) = [m for m in caplog.messages if "source_unbound" in m]
    assert "'nobody-2999'" in line and "left out" in line, line  # the diff review: never named


def test_cli_emit_to_an_unbound_source_fails(redis_server: RedisServer, namespace: str) -> None:
    Batcher.from_url(redis_server.url, namespace=namespace).register(
        "d", version="v1", source="orders", handler="m.h", batch={"count": 2, "window": "1h"})
    result = CliRunner().invoke(cli, ["emit", "ordres", '{"n": 1}', "--redis-url", redis_server.url,
                                      "--namespace", namespace])
    assert result.exit_code != 0 and "'ordres'" in result.output and "orders" in result.output


def test_an_asyncio_client_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as err:
        Batcher(redis.asyncio.Redis())  # type: ignore[arg-type]
    assert err.value.code == "client_async" and "asyncio" in str(err.value)


def test_from_url_passes_client_options(redis_server: RedisServer) -> None:
    b = Batcher.from_url(redis_server.url, max_connections=50, socket_timeout=5, chunk_size=10)
    assert b.client.connection_pool.max_connections == 50 and b.chunk_size == 10


def test_nothing_is_stored_when_a_partition_key_lookup_fails_late(batcher: Batcher, client) -> None:
    class Nasty(dict):  # type: ignore[type-arg]
        def get(self, *args: Any) -> Any:
            raise RuntimeError("lookup exploded")

    batcher.register("d", version="v1", source="s", handler="m.h",
                     batch={"count": 5000, "window": "1h", "key": "a.b"})
    events: list[dict[str, Any]] = [{"a": {"b": i % 7}} for i in range(1500)]
    events[1200] = {"a": Nasty(b=1)}
    with pytest.raises(PayloadError) as err:
        batcher.emit_many("s", events)
    assert "event 1200" in str(err.value) and err.value.code == "partition_key"
    assert batcher.open_buffers() == 0


def test_a_deeply_nested_payload_is_a_payload_error(batcher: Batcher) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "1h"})
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(PayloadError):
        batcher.emit("s", deep)


@pytest.mark.parametrize("field", ["id", "version", "source"])
def test_names_with_a_trailing_newline_are_refused(field: str) -> None:
    from distbatch.config import Binding

    args: dict[str, Any] = {"id": "ok", "version": "v1", "source": "s", "handler": "m.h",
                            "batch": {"count": 1, "window": "1s"}}
    args[field] += "\n"
    with pytest.raises(ConfigError):
        Binding.build(args.pop("id"), **args)


def test_a_namespace_with_a_trailing_newline_is_refused(client) -> None:
    with pytest.raises(ConfigError) as err:
        Batcher(client, namespace="ns\n")
    assert err.value.code == "namespace_invalid"


@pytest.mark.parametrize("factor", [math.nan, math.inf])
def test_backoff_factor_must_be_finite(factor: float) -> None:
    from distbatch.config import RetryPolicy

    with pytest.raises(ConfigError) as err:
        RetryPolicy.parse({"backoff_factor": factor})
    assert err.value.code == "retry_backoff_factor"


def test_object_partition_keys_do_not_depend_on_field_order(batcher: Batcher) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h",
                     batch={"count": 2, "window": "1h", "key": "k"})
    batcher.emit("s", {"k": {"a": 1, "b": 2}})
    (r,) = batcher.emit("s", {"k": {"b": 2, "a": 1}})
    assert r.batch is not None and r.partition_key == '{"a":1,"b":2}'


def test_every_option_can_come_from_the_environment() -> None:
    result = CliRunner().invoke(cli, ["worker"], env={"DISTBATCH_WORKER_LEASE": "soon"})
    assert result.exit_code == 2 and "'soon'" in result.output


def _options(cmd: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Option]]:
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _options(sub, [*path, name])
    for p in cmd.params:
        if isinstance(p, click.Option) and any(o.startswith("--") for o in p.opts):
            yield path, p


def test_every_option_is_read_from_the_variable_the_readme_names() -> None:
    """`DISTBATCH_<COMMAND>_<OPTION>`: click names the variable after the Python parameter, so
    `stats --json` (`as_json`), `worker --path`, `dead replay/purge --all` and `demo --keys` read
    `DISTBATCH_STATS_AS_JSON` and the like, and `worker --handlers` only `DISTBATCH_HANDLERS`:
    the names the README gives (`DISTBATCH_WORKER_HANDLERS`, ...) were ignored."""
    shared = {"DISTBATCH_REDIS_URL", "DISTBATCH_NAMESPACE", "DISTBATCH_QUEUE_URL",  # named so in the README
              "DISTBATCH_SHARDS"}
    for path, opt in _options(cli, []):
        flag = next(o for o in opt.opts if o.startswith("--"))[2:].replace("-", "_").upper()
        words = [p.upper().replace("-", "_") for p in path]
        documented = "_".join(["DISTBATCH", *words, flag])
        names = ([opt.envvar] if isinstance(opt.envvar, str) else list(opt.envvar or [])) or \
            ["_".join(["DISTBATCH", *words, (opt.name or "").upper()])]  # click's, from the parameter
        assert documented in names or shared & set(names), (path, opt.opts, names)
        if f"DISTBATCH_{flag}" in shared:  # `--help`: these are for all commands (demo's --namespace was not)
            assert f"DISTBATCH_{flag}" in names, (path, opt.opts, names)
    result = CliRunner().invoke(cli, ["dead", "purge", "--redis-url", "redis://127.0.0.1:1/0"],
                                env={"DISTBATCH_DEAD_PURGE_ALL": "1"})
    assert "name batch ids or pass --all" not in result.output  # --all came from the environment


def test_a_manual_clock_never_advances_backwards() -> None:
    """`advance(-5)` silently moved the window clock back: windows that had run out reopened."""
    from distbatch import ConfigError, ManualClock

    clock = ManualClock(1_000)
    with pytest.raises(ConfigError) as err:
        clock.advance(-5)
    assert err.value.code == "advance_range" and "-5" in str(err.value)
    assert clock.now_ms() == 1_000 and clock.advance(0) == 1_000
    clock.set(500)  # going back is said so
    assert clock.now_ms() == 500


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1.5, "10", True, -1, 1 << 53])
def test_a_manual_clock_time_that_is_not_whole_ms_is_named(bad: object) -> None:
    """`int()` took '10', 1.5 and True silently and NaN as a bare ValueError; a time past 2^53
    is one no Lua number holds exactly, so windows would compare wrong."""
    from distbatch import ConfigError, ManualClock

    for make in (lambda: ManualClock(bad), lambda: ManualClock(0).set(bad)):  # type: ignore[arg-type]
        with pytest.raises(ConfigError) as err:
            make()
        assert err.value.code.startswith("now_ms_") and f"now_ms={bad!r}" in str(err.value)
    clock = ManualClock((1 << 53) - 10)
    with pytest.raises(ConfigError):
        clock.advance(True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as err:
        clock.advance("1s")
    assert "after advance='1s'" in str(err.value) and clock.now_ms() == (1 << 53) - 10


# real processes -----------------------------------------------------------------------------


def test_worker_imports_handlers_from_the_app_folder(tmp_path: Path, redis_server: RedisServer) -> None:
    app = tmp_path / "myapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "handlers.py").write_text(textwrap.dedent("""
        import os, redis
        def digest(batch):
            redis.Redis.from_url(os.environ["DISTBATCH_REDIS_URL"]).rpush("test:myapp", batch.id)
    """))
    ns = "apppath"
    b = Batcher.from_url(redis_server.url, namespace=ns)
    b.register("d", version="v1", source="s", handler="myapp.handlers.digest",
               batch={"count": 1, "window": "1h"})
    (r,) = b.emit("s", {})
    env = {**env_with_path(), "DISTBATCH_REDIS_URL": redis_server.url}
    out = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--burst", "--namespace", ns,
                          "--handlers", "myapp.handlers"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert b.client.lrange("test:myapp", 0, -1) == [r.batch.id.encode()]  # type: ignore[union-attr]
    assert "worker_started" in out.stderr  # a start-up line at the default level
    assert "handlers_not_found" not in out.stderr and "namespace_empty" not in out.stderr


def test_a_typo_in_the_namespace_or_the_handlers_gets_a_word_at_start(tmp_path: Path,
                                                                     redis_server: RedisServer) -> None:
    """A worker on a namespace nobody registered in, allowed handlers of a module that does not
    import: it started silently, and ran nothing (every batch of a typo'd handler prefix went
    back untouched, one `handler_unavailable` a batch, only once batches came)."""
    Batcher.from_url(redis_server.url, namespace="orders").register(
        "d", version="v1", source="s", handler="myapp.handlers.digest", batch={"count": 1, "window": "1h"})
    env = {**env_with_path(), "DISTBATCH_REDIS_URL": redis_server.url}
    out = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--burst", "--namespace", "ordres",
                          "--handlers", "myap.handlers,tests.handlers"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "namespace_empty namespace=ordres" in out.stderr
    assert "handlers_not_found prefix=myap.handlers" in out.stderr
    assert "prefix=tests.handlers" not in out.stderr  # that one imports


def test_a_binding_whose_handler_module_does_not_import_is_named_as_the_worker_starts(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """`register` leaves a module it cannot import to the workers (the handlers live with them),
    which the README says name it as they start. They did not: a typo in the module's name
    (`myapp.handlerz.digest`) was said only once a batch came, then every 5 s, and its batches
    never ran nor went dead (the new-user review). A binding another pool runs is named as left
    to it; one this worker runs, not at all."""
    app = tmp_path / "myapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "handlers.py").write_text("def digest(batch):\n    pass\n")
    ns = "unrunnable"
    b = Batcher.from_url(redis_server.url, namespace=ns)
    for name, handler in (("ok", "myapp.handlers.digest"), ("typo", "myapp.handlerz.digest"),
                          ("elsewhere", "otherpool.handlers.digest")):
        b.register(name, version="v1", source="s", handler=handler, batch={"count": 5, "window": "1h"})
    env = {**env_with_path(), "DISTBATCH_REDIS_URL": redis_server.url}
    out = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--burst", "--namespace", ns,
                          "--handlers", "myapp"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (said,) = [line for line in out.stderr.splitlines() if "handler_unavailable" in line]
    assert "WARNING" in said and "bindings=1: typo@v1 (handler='myapp.handlerz.digest' cannot be " \
        "imported: ModuleNotFoundError" in said, said
    (elsewhere,) = [line for line in out.stderr.splitlines() if "handlers_elsewhere" in line]
    assert "bindings=1: elsewhere@v1; outside this worker's --handlers ['myapp']" in elsewhere
    assert "ok@v1" not in said + elsewhere


def test_the_start_up_word_on_unrunnable_bindings_is_one_line_whatever_their_number(
        redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    """A worker of one pool on a namespace holding 200 bindings of another wrote 200 warnings at
    every start (the diff review): one line each for what it cannot import and what is outside
    its --handlers, naming ten."""
    from distbatch.handlers import HandlerResolver
    from distbatch.worker import _say_unrunnable

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    for i in range(200):
        b.register(f"other{i}", version="v1", source="s", handler="teamb.handlers.digest",
                   batch={"count": 5, "window": "1h"})
    with caplog.at_level(logging.INFO, logger="distbatch"):
        _say_unrunnable(b, HandlerResolver(["teama"]))
    (line,) = [r.getMessage() for r in caplog.records if "handlers_elsewhere" in r.getMessage()]
    assert line.startswith("handlers_elsewhere bindings=200: other0@v1; other100@v1;")
    assert "and 190 more" in line


@pytest.mark.parametrize("role", ["worker", "sweeper"])
def test_started_while_redis_is_down_it_waits_quietly_and_then_works(role: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    log = tmp_path / "out.log"
    extra = ["--handlers", "tests.handlers"] if role == "worker" else []
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distbatch.cli", role, "--redis-url", url,
                                 "--namespace", "down", *extra],
                                env={**env_with_path(), "DISTBATCH_REDIS_URL": url}, stdout=out,
                                stderr=subprocess.STDOUT)
    server = RedisServer(port=port)
    try:
        time.sleep(3)
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        assert "Traceback" not in text and 1 <= text.count("\n") <= 8, text
        server.start()
        b = Batcher.from_url(server.url, namespace="down")
        b.register("d", version="v1", source="s", handler="tests.handlers.record",
                   batch={"count": 1 if role == "worker" else 5, "window": "200ms"})
        b.emit("s", {"n": 1})
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 30
        if role == "worker":  # it picks the batch up once Redis is there (delivered by tests.handlers)
            while not client.llen("test:delivered") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert client.llen("test:delivered") == 1, log.read_text()
        else:  # it cuts the expired window once Redis is there
            while not b.records.count("ready") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert b.records.count("ready") == 1, log.read_text()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(15)
        server.cleanup()


def test_a_pool_sized_as_the_readme_says_serves_a_thread_and_one_too_small_says_why(
        redis_server: RedisServer) -> None:
    """The README said to size max_connections for the emitting threads; a thread keeps one for
    its emits and a registry reload or hand-off takes a second: with one, every call failed with
    a bare 'Too many connections', and N threads on a blocking pool of N hung for the pool's
    timeout at every registry change."""
    small = redis.Redis(connection_pool=redis.ConnectionPool.from_url(redis_server.url, max_connections=1))
    b = Batcher(small, namespace="pool1")
    b.register("t", version="v1", source="s", batch={"count": 2, "window": "1h"}, handler="m.h")
    with pytest.raises(EmitError) as info:  # the registry read: nothing sent, said as for any emit
        b.emit("s", {"x": 1})
    assert "size max_connections to twice the emitting threads" in str(info.value)
    assert isinstance(info.value.__cause__, redis.ConnectionError) and info.value.not_sent == [0]
    pool = redis.BlockingConnectionPool.from_url(redis_server.url, max_connections=4, timeout=2)
    b = Batcher(redis.Redis(connection_pool=pool), namespace="pool2")
    b.register("t", version="v1", source="s", batch={"count": 2, "window": "1h"}, handler="m.h")
    errors: list[BaseException] = []

    def emit(n: int) -> None:
        try:
            for i in range(30):
                if i == 10 and n == 0:
                    b.register("t", version="v2", source="s", batch={"count": 2, "window": "1h"},
                               handler="m.h")  # every thread reloads the registry
                b.emit("s", {"x": i})
                b.emit_many("s", [{"x": i}, {"x": i}])  # cuts: hand-offs
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=emit, args=(n,)) for n in range(2)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and time.monotonic() - started < 10, errors


def test_a_url_naming_something_that_is_no_redis_is_one_error_line() -> None:
    """An HTTP port as --redis-url: redis-py's InvalidResponse (no ConnectionError) came out as a
    traceback."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        out = subprocess.run([sys.executable, "-m", "distbatch.cli", "stats", "--redis-url",
                              f"redis://127.0.0.1:{port}/0"], env=env_with_path(), capture_output=True,
                             text=True, timeout=60)
    finally:
        listener.close()
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("Error: ") and "InvalidResponse" in out.stderr, out.stderr


def test_a_client_made_from_a_url_waits_5s_at_most_unless_the_url_says_otherwise(
        redis_server: RedisServer) -> None:
    """redis-py 8 waits 5 s per call by default, redis-py 6 (the lowest supported) forever: on a
    Redis that hangs a lease renewal, a hand-off or a worker's stop never ended there."""
    b = Batcher.from_url(redis_server.url, namespace="t", queue_url=redis_server.url)
    assert b.dispatcher is not None
    for client in (b.client, b.dispatcher.client):
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5.0, 5.0)
    own = Batcher.from_url(f"{redis_server.url}?socket_timeout=2", namespace="t")
    assert own.client.connection_pool.connection_kwargs["socket_timeout"] == 2


def test_a_handlers_prefix_typod_in_its_last_part_or_that_fails_to_import_gets_a_word(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Only the parent package was looked up, and nothing imported: `tests.handler` (for
    `tests.handlers`) and a module with a syntax error started silently, and every batch of
    theirs went back every 5 s once batches came."""
    (tmp_path / "brokenapp").mkdir()
    (tmp_path / "brokenapp" / "__init__.py").write_text("")
    (tmp_path / "brokenapp" / "handlers.py").write_text("def digest(batch:\n")
    (tmp_path / "needy.py").write_text("import not_installed_anywhere\n")
    Batcher.from_url(redis_server.url, namespace="typo2").register(
        "d", version="v1", source="s", handler="tests.handlers.record", batch={"count": 1, "window": "1h"})
    env = {**env_with_path(), "DISTBATCH_REDIS_URL": redis_server.url}
    out = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--burst", "--namespace", "typo2",
                          "--handlers", "tests.handler,brokenapp.handlers,needy,tests.handlers.record"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "handlers_not_found prefix=tests.handler: no module of that name" in out.stderr
    assert "handlers_not_found prefix=brokenapp.handlers: it cannot be imported: SyntaxError" in out.stderr
    assert "handlers_not_found prefix=needy: it cannot be imported: ModuleNotFoundError" in out.stderr
    assert "prefix=tests.handlers.record" not in out.stderr  # a function's own path: allowed


def test_library_arguments_of_the_wrong_kind_are_named() -> None:
    """`emit(5, ...)`, `drop(5)`, `namespace=None` raised bare TypeErrors from deep inside,
    `emit_many(5, ...)` and `flush_expired("10")` returned [] in silence, `clock=5` failed at
    the first emit with an AttributeError, and `emit_many("s", {"i": 1})` (one dict) said
    "payload='i' must be a mapping"."""
    import fakeredis

    from distbatch import ConfigError, PayloadError

    b = Batcher(fakeredis.FakeRedis(), namespace="kinds", handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h"})
    cases: list[tuple[Any, type[Exception], str, str]] = [
        (lambda: b.emit(5, {}), ConfigError, "source_type", "source=5"),
        (lambda: b.emit_many(5, [{}]), ConfigError, "source_type", "source=5"),
        (lambda: b.emit_many("s", {"i": 1}), PayloadError, "payloads_type", "payloads={'i': 1} is one dict"),
        (lambda: b.drop(5), ConfigError, "binding_type", "binding=5"),
        (lambda: b.flush_expired("10"), ConfigError, "limit_invalid", "limit='10'"),
        (lambda: Batcher(fakeredis.FakeRedis(), namespace=None), ConfigError, "namespace_invalid",
         "namespace=None"),
        (lambda: Batcher(fakeredis.FakeRedis(), namespace="k2", clock=5), ConfigError, "clock_type",
         "clock=5"),
    ]
    for call, kind, code, named in cases:
        with pytest.raises(kind) as err:
            call()
        assert getattr(err.value, "code", None) == code and named in str(err.value), err.value
    assert b.counters().get("events_in:d@v1", 0) == 0


@pytest.mark.parametrize("which", ["stats", "dead", "meta", "bindings", "open"])
def test_a_wrong_typed_key_is_named_by_the_commands_it_stops(redis_server: RedisServer, namespace: str,
                                                             which: str) -> None:
    """`SET {ns}:dead x` (a hostile writer, an operator's slip): `stats` and `dead list` ended
    in a bare `WRONGTYPE ...`, naming no key, so nobody knew which of a namespace's keys to mend."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 5, "window": "1h", "key": "k"})
    b.emit("s", {"k": "a"})
    key = {"stats": b.keys.stats, "dead": b.keys.dead, "meta": b.keys.meta, "bindings": b.keys.bindings,
           "open": b.keys.open_buffers("d@v1")}[which]
    kept = {"stats": "hash", "dead": "zset", "meta": "hash", "bindings": "hash", "open": "set"}[which]
    client.delete(key)
    client.set(key, "x")
    args = ["--redis-url", redis_server.url, "--namespace", namespace]
    for command in (["stats"], ["dead", "list"]):
        result = CliRunner().invoke(cli, [*command, *args])
        if result.exit_code == 0:  # a command that reads no such key has nothing to say
            assert which in ("stats", "open") and command == ["dead", "list"], result.output
            continue
        assert "WRONGTYPE" in result.output and "Traceback" not in result.output
        assert f"keys of the wrong type (delete or rename them): {key} (a string; distbatch keeps a {kept} " \
               "there)" in result.output, result.output


@pytest.mark.parametrize("path, code", [
    ("tests.handlers.recrod", "handler_unknown"),  # the module imports here: a typo, said at once
    ("tests.handlers.Batch", "handler_invalid"),  # a class it imports
    ("tests.handlers._private", "handler_invalid"),  # no worker runs it
])
def test_a_handler_path_no_worker_could_run_is_refused_at_register(batcher: Batcher, path: str,
                                                                   code: str) -> None:
    """`register(..., handler="rvh.recrod")` with `rvh` importable passed: the worker said
    `handler_unavailable` every 5 s, the batch was given back each time, never ran, never went dead."""
    with pytest.raises(ConfigError) as err:
        batcher.register("d", version="v1", source="s", handler=path, batch={"count": 2, "window": "1h"})
    assert err.value.code == code and repr(path) in str(err.value)
    if code == "handler_unknown":
        assert "'record'" in str(err.value)  # what the module has, to spot the typo by
    assert batcher.bindings() == {}  # nothing stored


def test_a_handler_its_module_only_imports_is_said_at_register(batcher: Batcher,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """`tests.handlers.cache` is functools.cache, which the module only imports: a worker runs it
    only if its --handlers allow `functools` too, else its batches wait for ever (found by the
    README review). Which prefixes the workers allow is not known at register (one allowing two
    packages runs a re-export: the diff review), so it is said there, not refused."""
    with caplog.at_level(logging.WARNING, "distbatch"):
        key = batcher.register("d", version="v1", source="s", handler="tests.handlers.cache",
                               batch={"count": 2, "window": "1h"})
    assert key in batcher.bindings()
    (line,) = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "handler_imported"]
    assert "functools" in line and "--handlers" in line, line
    caplog.clear()
    with caplog.at_level(logging.WARNING, "distbatch"):
        batcher.register("e", version="v1", source="s", handler="tests.handlers.record",
                         batch={"count": 2, "window": "1h"})
    assert not any(getattr(r, "event", "") == "handler_imported" for r in caplog.records)


def test_a_handler_module_this_process_cannot_import_is_left_to_the_workers(batcher: Batcher) -> None:
    """The handlers may live with the workers only."""
    key = batcher.register("d", version="v1", source="s", handler="workers_only.handlers.digest",
                           batch={"count": 2, "window": "1h"})
    assert key in batcher.bindings()


def test_a_handler_module_that_imports_the_app_registering_it_still_resolves(
        redis_server: RedisServer, namespace: str, tmp_path: Path) -> None:
    """handlers.py imports the app (to emit follow-up events), whose import registers
    `handler="myapp.handlers.digest"`: imported handlers-first (a worker resolving the path, an
    entry point importing its handlers), register met the module half-imported, found no
    `digest` yet and refused it, so the import failed and the batches never ran."""
    pkg = tmp_path / "myapp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "app.py").write_text(textwrap.dedent(f"""
        from distbatch import Batcher
        batcher = Batcher.from_url({redis_server.url!r}, namespace={namespace!r}, handoff=False)
        batcher.register("digest", version="v1", source="s", batch={{"count": 2, "window": "1m"}},
                         handler="myapp.handlers.digest")
    """))
    (pkg / "handlers.py").write_text(textwrap.dedent("""
        from myapp.app import batcher

        def digest(batch):
            batcher.emit("done", {"n": len(batch.events)})
    """))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from distbatch.handlers import HandlerResolver
        print(HandlerResolver(["myapp"]).resolve("myapp.handlers.digest").__name__)
    """)], cwd=tmp_path, env={**env_with_path(), "PYTHONPATH": f"{tmp_path}:{env_with_path()['PYTHONPATH']}"},
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "digest", out.stderr


def test_a_log_budget_says_how_many_lines_it_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines past a budget are counted, and the count comes with the next line written."""
    from distbatch import logbudget

    now = [100.0]
    monkeypatch.setattr(logbudget.time, "monotonic", lambda: now[0])
    budget = logbudget.LogBudget(2, window_s=60)
    assert [budget.take() for _ in range(5)] == ["", "", None, None, None]
    now[0] += 60
    assert budget.take() == " (3 more such line(s) left out before this one)"
    assert budget.take() == ""
    now[0] += 60  # a key left out again in its window is not counted again (a source emitted to
    assert [budget.take(k) for k in "aabbbc"] == ["", "", None, None, None, None]  # 500 times)
    now[0] += 60
    assert budget.take("d") == " (2 more such line(s) left out before this one)"
    assert logbudget.shown("k" * 10_000).endswith("…") and len(logbudget.shown("k" * 10_000)) < 210
