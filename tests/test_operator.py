"""An operator at the CLI of a live namespace: every mistake gets a clear word (found by an
operator's review; each test failed on the code before its fix)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import redis
from click.testing import CliRunner

from distbatch import Batcher, EmitError
from distbatch.cli import main as cli

from .redis_server import RedisServer, env_with_path


def _counter(client: redis.Redis, namespace: str, name: str) -> int:
    return int(client.hget(f"{{{namespace}}}:stats", name) or 0)


def test_emit_from_stdin_whose_binding_is_dropped_midstream_does_not_claim_success(
        redis_server: RedisServer, namespace: str) -> None:
    """`distbatch emit` checks that SOURCE is bound once, at start. An operator drops the binding
    while lines stream in on stdin: every later line is silently not stored (emit_many finds no
    binding and returns no result), yet the command exits 0 and prints `"events": 6`, as if all
    six were emitted. README: "non-zero exit if SOURCE is unbound"; and a failing line must say
    which lines were stored."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("e", version="v1", source="s", handler="tests.handlers.noop",
               batch={"count": 1000, "window": "1h"})
    p = subprocess.Popen([sys.executable, "-m", "distbatch.cli", "emit", "s", "--chunk", "1",
                          "--redis-url", redis_server.url, "--namespace", namespace],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env_with_path())
    try:
        assert p.stdin is not None
        for i in range(3):
            p.stdin.write(json.dumps({"i": i}).encode() + b"\n")
        p.stdin.flush()
        deadline = time.monotonic() + 30
        while _counter(client, namespace, "events_in:e@v1") < 3:
            assert time.monotonic() < deadline, "the first 3 lines were never stored"
            time.sleep(0.05)
        assert len(b.drop("e@v1")) == 3  # the operator retires the binding mid-stream
        out, err = p.communicate(b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(3, 6)),
                                 timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert _counter(client, namespace, "events_in:e@v1") == 3  # lines 4-6 were not stored
    summary = out.decode().strip()
    # What should happen: a non-zero exit that says lines 4 on were not stored (no binding).
    assert p.returncode != 0, (f"exit 0 with {summary!r}, though lines 4-6 were not stored "
                               f"(stderr: {err.decode()[-300:]!r})")


def test_an_empty_queue_url_variable_is_refused_like_the_redis_url(redis_server: RedisServer,
                                                                   namespace: str) -> None:
    """`DISTBATCH_REDIS_URL=""` and `DISTBATCH_NAMESPACE=""` are refused ("set but empty (an unset
    variable in a compose file?)"), but `DISTBATCH_QUEUE_URL=""` is taken in silence as "no queue
    URL": that process puts (or waits for) tickets on the main Redis while the others use the
    queue's Redis. A worker so started never sees the tickets the producers and sweepers put on
    the queue's Redis."""
    Batcher.from_url(redis_server.url, namespace=namespace, handoff=False).register(
        "q", version="v1", source="s", handler="tests.handlers.noop", batch={"count": 5, "window": "1h"})
    result = CliRunner().invoke(cli, ["emit", "s", "{}", "--redis-url", redis_server.url,
                                      "--namespace", namespace], env={"DISTBATCH_QUEUE_URL": ""})
    assert result.exit_code == 2, result.output
    assert "DISTBATCH_QUEUE_URL is set but empty" in result.output


def test_a_burst_worker_does_not_exit_silently_with_batches_ready(redis_server: RedisServer,
                                                                  namespace: str) -> None:
    """`distbatch worker --burst` ("Exit when the queue is empty") exits 0 at once when batches are
    ready but no ticket is queued (cut by an app with handoff=False / `on_cut`, or by a producer
    killed before its hand-off, before a sweeper noticed): it runs none of them and says nothing.
    Hand-off state lives in distbatch's keys (README, "How a batch travels"), so a burst worker
    run to drain a namespace should drain what is ready, or at least say it left batches."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("r", version="v1", source="s", handler="tests.handlers.noop",
               batch={"count": 2, "window": "1h"})
    b.emit_many("s", [{"i": i} for i in range(6)])
    assert b.records.count("ready") == 3
    done = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--burst", "--handlers",
                           "tests.handlers", "--redis-url", redis_server.url, "--namespace", namespace],
                          env=env_with_path(), capture_output=True, text=True, timeout=60)
    left = b.records.count("ready")
    said = "ready" in done.stderr.replace("batches ready 0", "")
    assert left == 0 or said, (f"exit {done.returncode}, {left} batches left ready, not a word: "
                               f"{done.stderr[-500:]!r}")
    assert int(client.hget(b.keys.stats, "events_delivered:r@v1") or 0) == 6


def _acl_user(client: redis.Redis, name: str, commands: list[str]) -> str:
    client.acl_setuser(name, enabled=True, passwords=["+op-password-123"], keys=["*"], channels=["*"],
                       commands=commands)
    return name


def _as_noscript_user(redis_server: RedisServer, namespace: str, tag: str,
                      events: int) -> tuple[str, Batcher]:
    """`events` ready batches of one binding, and a batcher of a user that may do all but run
    scripts (what a drain needs): the user's name and that batcher."""
    user = _acl_user(redis.Redis.from_url(redis_server.url), f"noscript-{tag}-{namespace}",
                     ["+@all", "-@scripting"])
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="tests.handlers.noop",
               batch={"count": 1, "window": "1h"})
    assert all(r.batch is not None for r in b.emit_many("s", [{"n": n} for n in range(events)]))
    url = redis_server.url.replace("redis://", f"redis://{user}:op-password-123@")
    return user, Batcher.from_url(url, namespace=namespace, handoff=False)


def test_a_sweeper_whose_acl_user_cannot_write_ends_with_one_error(redis_server: RedisServer,
                                                                   namespace: str) -> None:
    """A worker started as an ACL user that may only read ends with one `Error: Redis refused:
    NoPermissionError ... the ACL user of --redis-url lacks it` line; a sweeper started the same
    way never ends: `sweeper_step_failed: NoPermissionError ...; retrying in 5.0s`, for ever. A
    permission is a mistake no wait mends (`_patient_batcher`: "a wrong password or an ACL refusal
    is no outage to wait out, but a mistake: one clear error")."""
    client = redis.Redis.from_url(redis_server.url)
    Batcher(client, namespace=namespace).register("d", version="v1", source="s", handler="m.h",
                                                   batch={"count": 3, "window": "1h"})
    user = _acl_user(client, f"ro-sw-{namespace}", ["+@read", "+time"])  # README's look-only user
    url = redis_server.url.replace("redis://", f"redis://{user}:op-password-123@")
    p = subprocess.Popen([sys.executable, "-m", "distbatch.cli", "sweeper", "--redis-url", url,
                          "--namespace", namespace], env=env_with_path(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        try:
            out, _ = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.terminate()
            out, _ = p.communicate(timeout=30)
            raise AssertionError("the sweeper was still running after 20 s, retrying a permission "
                                 f"refusal: {out[-600:]!r}") from None
        assert p.returncode == 1, out
        assert "Error: Redis refused" in out and "Traceback" not in out, out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        client.acl_deluser(user)


def test_an_emit_the_acl_refuses_is_not_sent_not_uncertain(redis_server: RedisServer,
                                                           namespace: str) -> None:
    """An emit by a user without EVALSHA is refused by Redis before the script runs: nothing can
    be stored. EmitError calls the events `uncertain` ("may or may not be stored"), so an operator
    cannot tell whether re-emitting duplicates them (README: re-emitting `not_sent` never
    duplicates; `uncertain` may), and `distbatch emit` says "the event may or may not be stored"."""
    client = redis.Redis.from_url(redis_server.url)
    Batcher(client, namespace=namespace).register("d", version="v1", source="s", handler="m.h",
                                                   batch={"count": 3, "window": "1h"})
    user = _acl_user(client, f"ro-emit-{namespace}", ["+@read", "+time"])
    try:
        url = redis_server.url.replace("redis://", f"redis://{user}:op-password-123@")
        b = Batcher.from_url(url, namespace=namespace, handoff=False)
        try:
            b.emit_many("s", [{"n": 1}, {"n": 2}])
        except EmitError as exc:
            err = exc
        else:
            raise AssertionError("the emit was not refused")
        assert _counter(client, namespace, "events_in:d@v1") == 0  # nothing was stored
        assert (err.stored, err.uncertain, err.not_sent) == ([], [], [0, 1]), str(err)
    finally:
        client.acl_deluser(user)


def test_a_look_at_a_namespace_with_dead_batches_of_a_dropped_binding_calls_it_no_typo(
        redis_server: RedisServer, namespace: str) -> None:
    """Once its last binding is dropped, `dead list` / `dead replay --all` on a namespace that still
    holds dead batches (still delivered: workers find the dropped definition) say "namespace 'x'
    has no binding registered (a typo'd --namespace? ...)" beside the batches they list: the
    operator is told they typed the wrong namespace while looking at the right one."""
    from distbatch.executor import Executor
    from distbatch.handlers import HandlerResolver

    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="tests.handlers.boom",
               batch={"count": 1, "window": "1h"}, retry={"attempts": 1})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None
    claim = b.records.claim([r.batch.id], 10_000)
    assert claim is not None
    Executor(b.records, HandlerResolver(["tests.handlers"]), 10_000).run(claim)
    assert b.records.count("dead") == 1
    b.drop("d@v1")
    done = subprocess.run([sys.executable, "-m", "distbatch.cli", "dead", "list", "--redis-url",
                           redis_server.url, "--namespace", namespace], env=env_with_path(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and r.batch.id in done.stdout, done.stderr
    assert "a typo'd --namespace?" not in done.stderr, done.stderr


def test_a_worker_whose_sweeper_the_acl_refuses_stops_with_one_error(redis_server: RedisServer,
                                                                     namespace: str) -> None:
    """`worker --with-sweeper` as a user the worker's own calls pass but its sweeper's do not (RQ's
    channels only, not the wake channels): the sweeper thread ended with a traceback and the
    worker went on without it, so no window was cut on time and no dead worker's batch
    reclaimed."""
    client = redis.Redis.from_url(redis_server.url)
    Batcher(client, namespace=namespace).register("d", version="v1", source="s", handler="m.h",
                                                   batch={"count": 3, "window": "1h"})
    user = f"nochan-{namespace}"
    client.acl_setuser(user, enabled=True, passwords=["+op-password-123"], keys=["*"],
                       commands=["+@all"], channels=["rq:*"])
    url = redis_server.url.replace("redis://", f"redis://{user}:op-password-123@")
    try:
        done = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--with-sweeper",
                               "--handlers", "tests.handlers", "--redis-url", url, "--namespace",
                               namespace], env=env_with_path(), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1, done.stderr[-800:]
        assert "sweeper_refused" in done.stderr and "Error: Redis refused" in done.stderr, done.stderr[-800:]
        assert "Traceback" not in done.stderr, done.stderr[-800:]
    finally:
        client.acl_deluser(user)


def test_an_option_variable_set_empty_is_refused_for_every_option(redis_server: RedisServer,
                                                                  namespace: str) -> None:
    """Every option reads DISTBATCH_<COMMAND>_<OPTION> too; set empty (an unset variable in a
    compose file), click took it for unset and the default ran in silence (a 10 s lease where the
    operator meant to set one; no --shards check)."""
    for env, args in ((("DISTBATCH_WORKER_LEASE", ""), ["worker", "--burst"]),
                      (("DISTBATCH_SHARDS", ""), ["worker", "--burst"]),
                      (("DISTBATCH_REDIS_URL", ""), ["demo", "--count", "1"])):
        result = CliRunner().invoke(cli, args if env[0] == "DISTBATCH_REDIS_URL" else
                                    [*args, "--redis-url", redis_server.url, "--namespace", namespace],
                                    env=dict([env]))
        assert result.exit_code == 2, (env, result.output)
        assert f"{env[0]} is set but empty" in result.output, (env, result.output)
    flag = CliRunner().invoke(cli, ["stats", "--redis-url", redis_server.url, "--namespace", namespace],
                              env={"DISTBATCH_STATS_JSON": ""})  # a flag's empty variable is off
    assert flag.exit_code == 0, flag.output


def test_a_worker_whose_user_has_no_channel_says_so_in_one_line(redis_server: RedisServer,
                                                                namespace: str) -> None:
    """RQ's pub/sub thread (its commands: shutdown, kill-horse) refused by the ACL ended with a
    traceback on stderr, and RQ's commands never reached the worker; now one line says which
    permission is missing, and the worker runs its batches."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher.from_url(redis_server.url, namespace=namespace)  # a ticket for the worker
    b.register("d", version="v1", source="s", handler="tests.handlers.noop",
               batch={"count": 1, "window": "1h"})
    b.emit("s", {"n": 1})
    user = f"nochan-{namespace}"
    client.acl_setuser(user, enabled=True, passwords=["+op-password-123"], keys=["*"],
                       commands=["+@all"], reset_channels=True)
    url = redis_server.url.replace("redis://", f"redis://{user}:op-password-123@")
    try:
        p = subprocess.Popen([sys.executable, "-m", "distbatch.cli", "worker", "--handlers",
                              "tests.handlers", "--redis-url", url, "--namespace", namespace],
                             env=env_with_path(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        try:
            deadline = time.monotonic() + 30
            while b.records.count("ready"):  # the batch runs, though RQ's channel is refused
                assert time.monotonic() < deadline and p.poll() is None, "the batch never ran"
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            p.terminate()
            out, _ = p.communicate(timeout=30)
        assert "worker_pubsub_refused" in out and "&* +@pubsub" in out, out[-800:]
        assert "Traceback" not in out, out[-1500:]
    finally:
        client.acl_deluser(user)


def test_a_bad_value_from_the_environment_is_blamed_on_its_variable(redis_server: RedisServer,
                                                                    namespace: str) -> None:
    """`DISTBATCH_WORKER_LEASE=500ms` was refused as "Invalid value for '--lease'", an option the
    operator never typed: the word names the variable the value came from, and the option."""
    for env, name in (({"DISTBATCH_WORKER_LEASE": "500ms"}, "DISTBATCH_WORKER_LEASE"),
                      ({"DISTBATCH_SHARDS": "0"}, "DISTBATCH_SHARDS")):
        result = CliRunner().invoke(cli, ["worker", "--burst", "--redis-url", redis_server.url,
                                          "--namespace", namespace], env=env)
        assert result.exit_code == 2, result.output
        assert name in result.output and env[name] in result.output, result.output
    typed = CliRunner().invoke(cli, ["worker", "--burst", "--lease", "500ms", "--redis-url",
                                     redis_server.url, "--namespace", namespace])
    assert typed.exit_code == 2 and "'--lease'" in typed.output, typed.output
    assert "DISTBATCH_WORKER_LEASE" not in typed.output, typed.output


def test_sigterm_while_a_burst_worker_runs_an_unannounced_batch_lets_it_finish(
        redis_server: RedisServer, namespace: str) -> None:
    """`worker --burst` runs the batches no ticket announced after RQ's loop ends; a SIGTERM then
    (a deploy, Ctrl-C) met RQ's handler outside any job, which raised StopRequested inside the
    running handler: the batch failed, dead with `attempts: 1`, instead of the warm stop the log
    line promised (found by the second review)."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)  # no ticket
    b.register("w", version="v1", source="s", handler="tests.handlers.slow_record",
               batch={"count": 1, "window": "1h"}, retry={"attempts": 1})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None
    p = subprocess.Popen([sys.executable, "-m", "distbatch.cli", "worker", "--burst", "--handlers",
                          "tests.handlers", "--redis-url", redis_server.url, "--namespace", namespace],
                         env={**env_with_path(), "DISTBATCH_REDIS_URL": redis_server.url,
                              "TEST_HANDLER_SLEEP": "2"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while client.get(f"test:inflight:{p.pid}") is None:
            assert time.monotonic() < deadline and p.poll() is None, "the handler never started"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)  # a warm stop: the batch in hand finishes
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    delivered = [json.loads(x)["id"] for x in client.lrange("test:delivered", 0, -1)]  # shared
    assert delivered.count(r.batch.id) == 1 and b.records.count("dead") == 0, out[-1500:]


def test_a_sweeper_stopped_as_its_user_is_deleted_ends_quietly(redis_server: RedisServer,
                                                                namespace: str) -> None:
    """The demo's (or a worker's) sweeper thread told to stop while it waited on its wake channel,
    its ACL user deleted then (its connections closed, the reconnect refused): it raised the
    refusal out of the thread, a traceback on stderr, where it was stopping anyway."""
    import threading

    from distbatch.sweeper import Sweeper

    client = redis.Redis.from_url(redis_server.url)
    Batcher(client, namespace=namespace).register("d", version="v1", source="s", handler="m.h",
                                                   batch={"count": 3, "window": "1h"})
    user = f"sw-{namespace}"
    client.acl_setuser(user, enabled=True, passwords=["+op-password-123"], keys=["*"], channels=["*"],
                       commands=["+@all"])
    url = redis_server.url.replace("redis://", f"redis://{user}:op-password-123@")
    sweeper = Sweeper(Batcher.from_url(url, namespace=namespace, handoff=False), max_sleep_s=2.0)
    stop, raised = threading.Event(), []

    def run() -> None:
        try:
            sweeper.run(stop)
        except Exception as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.5)  # subscribed, waiting on its wake channel (nothing due for 2 s)
    stop.set()
    client.acl_deluser(user)  # its connections are closed; a reconnect is refused
    thread.join(15)
    assert not thread.is_alive() and raised == [], raised


@pytest.mark.parametrize("burst", [False, True])
def test_a_worker_whose_acl_user_cannot_run_scripts_stops_with_one_error(redis_server: RedisServer,
                                                                         namespace: str, burst: bool) -> None:
    """README: "A login or ACL refusal ends a worker ... with one `Error:` line". A worker whose
    user may not run scripts (no EVALSHA) logged `drain_refused` as for a key of the wrong type,
    paused 5 s, and took the next ticket for ever (its heartbeat counted in /healthz, no batch
    ran); with --burst it exited 0 (found by the README review)."""
    client = redis.Redis.from_url(redis_server.url)
    b = Batcher(client, namespace=namespace)
    b.register("d", version="v1", source="s", handler="tests.handlers.noop",
               batch={"count": 1, "window": "1h"})
    assert b.emit("s", {"n": 1})[0].batch is not None  # a ready batch and its ticket
    user = f"noscript-{namespace}"
    client.acl_setuser(user, enabled=True, passwords=["+op-password-123"], keys=["*"], channels=["*"],
                       commands=["+@all", "-@scripting"])
    url = redis_server.url.replace("redis://", f"redis://{user}:op-password-123@")
    try:
        done = subprocess.run([sys.executable, "-m", "distbatch.cli", "worker", "--handlers",
                               "tests.handlers", "--redis-url", url, "--namespace", namespace,
                               *(["--burst"] if burst else [])],
                              env=env_with_path(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr[-800:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: Redis refused") and "Traceback" not in done.stderr, done.stderr[-800:]
    finally:
        client.acl_deluser(user)


def test_a_plain_rq_workers_drain_the_acl_refuses_pauses_and_runs_once_fixed(
        redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain `rq worker` runs the same ticket job, which cannot end it: the first version of the
    ACL stop set its executor's stop there, so every later drain ran nothing while the ticket
    still fanned out another (6,859 tickets in 25 s in the diff review's run), and nothing ran
    after the user was fixed. Now it pauses as for any refusal, hands no ticket on, and runs the
    batch once the user may."""
    from distbatch import jobs
    from distbatch.executor import Executor
    from distbatch.handlers import HandlerResolver

    monkeypatch.setattr(jobs, "REFUSED_PAUSE_S", 0.1)
    admin = redis.Redis.from_url(redis_server.url)
    user, as_user = _as_noscript_user(redis_server, namespace, "rq", 1)
    try:
        executor = Executor(as_user.records, HandlerResolver(["tests.handlers"]), 5000)  # as jobs makes it
        assert jobs.drain_reported(executor, namespace, 10, 5.0) == {"refused": 1}
        assert not executor.stop.is_set() and executor.refused and executor.mistake is None
        admin.acl_setuser(user, commands=["+@scripting"])
        assert jobs.drain_reported(executor, namespace, 10, 5.0).get("delivered") == 1
        assert not executor.refused
    finally:
        admin.acl_deluser(user)


def test_a_forking_rq_workers_drain_the_acl_refuses_fans_no_ticket_out(
        redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forking `rq worker` (RQ's default) runs each ticket in a fresh child with a fresh
    executor, which knew nothing of the last drain's refusal: each fanned a ticket out at its
    start, before its claim was refused, so a worker whose user may not run scripts took one
    empty job every 5 s, for as long as the permission lacked (the second diff review). The
    fan-out comes after the drain's first claim went through now."""
    from distbatch import jobs
    from distbatch.dispatch import Dispatcher
    from distbatch.executor import Executor
    from distbatch.handlers import HandlerResolver
    from distbatch.keys import Keys

    monkeypatch.setattr(jobs, "REFUSED_PAUSE_S", 0.01)
    admin = redis.Redis.from_url(redis_server.url)
    user, as_user = _as_noscript_user(redis_server, namespace, "fork", 3)  # a drain would fan out
    try:
        queue = f"rq:queue:{Keys(namespace).queue_name}"
        for _ in range(3):  # one fresh child per ticket, as a forking worker runs them
            executor = Executor(as_user.records, HandlerResolver(["tests.handlers"]), 5000,
                                dispatcher=Dispatcher(as_user.client, Keys(namespace)))
            assert jobs.drain_reported(executor, namespace, 10, 5.0) == {"refused": 1}
            assert admin.llen(queue) == 0, "a refused drain fanned a ticket out"
        admin.acl_setuser(user, commands=["+@scripting"])  # fixed: the next ticket runs and fans out
        executor = Executor(as_user.records, HandlerResolver(["tests.handlers"]), 5000,
                            dispatcher=Dispatcher(as_user.client, Keys(namespace)))
        assert jobs.drain_reported(executor, namespace, 1, 5.0).get("delivered") == 1
    finally:
        admin.acl_deluser(user)


def test_a_stop_as_the_heartbeat_thread_starts_ends_the_worker_cleanly(
        redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop signal (a refused sweeper sends the worker one) that landed between the heartbeat
    thread's making and its start: the way out joined a thread never started, and the worker
    ended in `RuntimeError: cannot join thread before it is started` (the min-versions run, on a
    loaded machine, in `test_a_worker_whose_sweeper_the_acl_refuses_stops_with_one_error`). The
    stop is made to land exactly there."""
    import threading

    from distbatch import worker as worker_module

    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "distbatch-heartbeat":
            raise worker_module.StopRequested()
        real_start(self)

    b = Batcher.from_url(redis_server.url, namespace=namespace)
    b.register("d", version="v1", source="s", handler="tests.handlers.noop",
               batch={"count": 3, "window": "1h"})
    monkeypatch.setattr(threading.Thread, "start", start)
    assert worker_module.run_worker(b, handlers=["tests.handlers"], burst=True, summary_every_s=0) is False
