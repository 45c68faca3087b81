"""Prometheus metrics: the namespace's counters read from Redis by `distbatch serve` (/metrics),
and each worker's and sweeper's own observations on --metrics-port; real processes throughout."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from distbatch import Batcher
from distbatch.testing import RedisServer, env_with_path, free_port

from .processes import Procs, delivered, wait_for
from .test_serve import TOKEN, Server

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), float("nan"))


@pytest.fixture
def procs(redis_server: RedisServer, namespace: str, tmp_path: Path) -> Iterator[Procs]:
    p = Procs(redis_server.url, namespace, tmp_path, env={"DISTBATCH_API_TOKENS": TOKEN})
    yield p
    p.stop_all()


def test_serve_metrics_read_the_namespace_from_redis(redis_server: RedisServer, namespace: str,
                                                     tmp_path: Path) -> None:
    """Counters come from Redis, so a serve that emitted nothing reports what another process
    emitted, and two serve instances report the same totals (max them, never sum)."""
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("m", version="v1", source="s", handler="tests.handlers.record",
               batch={"count": 4, "window": "1h", "key": "k"})
    b.emit_many("s", [{"k": str(i % 3), "n": i} for i in range(14)])  # cuts 3 of 4, 2 left open
    one, two = Server(redis_server.url, tmp_path, namespace), Server(redis_server.url, tmp_path, namespace)
    try:
        assert httpx.get(f"{one.url}/metrics").status_code == 401
        texts = [httpx.get(f"{s.url}/metrics", headers=AUTH).text for s in (one, two)]
    finally:
        one.stop()
        two.stop()
    for text in texts:
        assert value(text, "distbatch_events_total", binding="m@v1") == 14
        assert value(text, "distbatch_batches_cut_total", binding="m@v1", reason="count") == 3
        assert value(text, "distbatch_open_buffers", binding="m@v1") == 2 == b.open_buffers()
        assert value(text, "distbatch_batches", state="ready") == 3 == b.records.count("ready")
        assert value(text, "distbatch_batches", state="dead") == 0
        assert value(text, "distbatch_oldest_overdue_seconds") == 0


def test_worker_and_sweeper_metrics_ports(procs: Procs, redis_server: RedisServer, namespace: str) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.delete("test:delivered")
    b = Batcher.from_url(redis_server.url, namespace=namespace)
    b.register("w", version="v1", source="s", handler="tests.handlers.record",
               batch={"count": 5, "window": "300ms", "key": "k"})
    wport, sport = free_port(), free_port()
    procs.worker("--metrics-port", str(wport))
    procs.sweeper("--metrics-port", str(sport))

    def scrape(port: int) -> str:
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=AUTH)
        assert r.status_code == 200
        return r.text

    # the window's lateness is measured below: the sweeper must be sweeping before it opens (a
    # process still starting on a loaded machine made it 0.7 s late)
    wait_for(lambda: client.zcard(b.keys.sweepers) == 1, 30, "the sweeper", procs.logs)
    b.emit_many("s", [{"k": "full", "n": i} for i in range(10)] + [{"k": "partial", "n": 99}])
    wait_for(lambda: len(delivered(client)) == 3, 20, "3 batches delivered", procs.logs)

    wait_for(lambda: value(scrape(wport), "distbatch_handler_runs_total", binding="w@v1",
                           outcome="delivered") == 3, 10, "worker metrics", procs.logs)
    w = scrape(wport)
    assert value(w, "distbatch_batch_size_events_count", binding="w@v1") == 3
    assert value(w, "distbatch_batch_size_events_sum", binding="w@v1") == 11
    assert value(w, "distbatch_handler_duration_seconds_count", binding="w@v1") == 3
    assert value(w, "distbatch_handler_start_delay_seconds_count", binding="w@v1") == 3
    assert value(w, "distbatch_leases_lost_total") == 0
    s = scrape(sport)
    assert value(s, "distbatch_cut_lateness_seconds_count") == 1  # the partial batch, by the sweeper
    assert value(s, "distbatch_cut_lateness_seconds_sum") < 0.5
    late = client.lrange(b.keys.lateness, 0, -1)
    assert len(late) == 1 and int(late[0].split()[1]) < 500
    assert httpx.get(f"http://127.0.0.1:{wport}/metrics").status_code == 401  # no token, no metrics


def test_metrics_port_refuses_to_listen_without_auth(redis_server: RedisServer) -> None:
    def run(*args: str, tokens: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "distbatch.cli", "sweeper", "--redis-url", redis_server.url,
             "--metrics-port", str(free_port()), *args],
            env={**env_with_path(), "DISTBATCH_API_TOKENS": tokens}, capture_output=True, text=True,
            timeout=30)

    none = run()
    assert none.returncode != 0 and "DISTBATCH_API_TOKENS" in none.stderr
    public = run("--metrics-insecure-no-auth", "--metrics-host", "0.0.0.0")
    assert public.returncode != 0 and "loopback" in public.stderr


def test_the_metrics_port_without_auth_answers_no_page_in_a_browser() -> None:
    """`--metrics-insecure-no-auth` listens on loopback, which keeps other machines out but not a
    page in the user's browser reading it through a rebound name; `serve` refused those, the
    metrics port did not."""
    from distbatch.metrics import serve_process_metrics

    port = free_port()
    server = serve_process_metrics("127.0.0.1", port, frozenset())
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url).status_code == 200
        assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
        for headers in ({"Host": f"rebound.example:{port}"}, {"Origin": "https://evil.example"},
                        {"Sec-Fetch-Site": "cross-site"}):
            r = httpx.get(url, headers=headers)
            assert r.status_code == 403 and r.text.startswith("not_local"), (headers, r.text)
    finally:
        server.shutdown()
        server.server_close()


def noop(batch: object) -> None:
    """A handler this module's tests allow."""


def test_the_start_delay_counts_a_handler_that_started_not_a_batch_given_back(batcher: Batcher) -> None:
    """A worker that cannot run the handler (a rolling deploy) gave the batch back after it had
    observed its cut → start delay; the refund kept it at try 1, so each worker that gave it back,
    and then the one that ran it, observed it again: one batch, three counts."""
    from prometheus_client import REGISTRY

    from distbatch.executor import Executor, Status
    from distbatch.handlers import HandlerResolver

    batcher.register("sd", version="v1", source="s", handler=f"{__name__}.noop",
                     batch={"count": 1, "window": "1h"})
    ids = [r.batch.id for r in batcher.emit_many("s", [{"n": 1}, {"n": 2}]) if r.batch]

    def count() -> float:
        name = "distbatch_handler_start_delay_seconds_count"
        return REGISTRY.get_sample_value(name, {"binding": "sd@v1"}) or 0.0

    before = count()
    unable = Executor(batcher.records, HandlerResolver(["elsewhere"]), 10_000)
    assert unable.run(batcher.records.claim([ids[0]], 10_000)).status == Status.UNAVAILABLE
    assert count() == before  # it never started
    able = Executor(batcher.records, HandlerResolver([__name__]), 10_000)
    assert able.run(batcher.records.claim([ids[1]], 10_000)).status == Status.DELIVERED
    assert count() == before + 1


def test_a_worker_drops_the_series_of_bindings_it_no_longer_runs_and_keeps_live_ones(
        batcher: Batcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every binding version a long-running worker ran kept ~50 series for good (5,087 series
    after 100 versions, in the growth review's run): each deploy that changes a binding adds a
    version. A binding not run for `LABELLED_IDLE_S` loses its series; one still running never
    does, however many there are (a cap of 64 reset the series of a worker running 65 in turn,
    so `increase()` saw no run: the second diff review)."""
    from prometheus_client import REGISTRY

    from distbatch import metrics
    from distbatch.executor import Executor, Status
    from distbatch.handlers import HandlerResolver

    now = [max([*metrics._labelled.values(), time.monotonic()]) + 1]  # on from what is there
    monkeypatch.setattr(metrics, "_monotonic", lambda: now[0])
    able = Executor(batcher.records, HandlerResolver([__name__]), 10_000)

    def run(binding: str) -> None:
        name, _, version = binding.partition("@")
        batcher.register(name, version=version, source="s", handler=f"{__name__}.noop",
                         batch={"count": 1, "window": "1h"})
        (r,) = batcher.emit("s", {"n": 1})
        assert able.run(batcher.records.claim([r.batch.id], 10_000)).status == Status.DELIVERED
        batcher.drop(binding)

    def runs(binding: str) -> float | None:
        return REGISTRY.get_sample_value("distbatch_handler_runs_total",
                                         {"binding": binding, "outcome": "delivered"})

    tag = uuid.uuid4().hex[:8]  # the series are the process's: each backend's run its own names
    live = [f"live{i}x{tag}@v1" for i in range(70)]
    for _ in range(2):  # 70 bindings run in turn, twice: every series counts both runs
        for binding in live:
            run(binding)
            now[0] += 1
    assert all(runs(b) == 2 for b in live)
    now[0] += metrics.LABELLED_IDLE_S + 1  # an hour on, one binding runs: the idle ones go
    run(f"new{tag}@v1")
    assert runs(f"new{tag}@v1") == 1 and all(runs(b) is None for b in live)
    assert set(metrics.OUTCOMES) == {s.value for s in Status}  # each one's series is removed


def test_what_a_sweep_and_an_emit_say_of_windows_they_discard_or_cut(
        batcher: Batcher, clock, caplog: pytest.LogCaptureFixture, redis_server: RedisServer) -> None:
    """The sweeper counted discarded windows as cut (`sweeper_summary cut=10` for ten discards);
    an emit that closed a discarded window logged no `batch_discarded` (the sweeper does); and
    `distbatch emit` said `batches_fired: 0` when its event closed an expired window, cut."""
    import logging

    from click.testing import CliRunner

    from distbatch.cli import main as cli
    from distbatch.sweeper import Sweeper

    batcher.register("gone", version="v1", source="d", handler="m.h",
                     batch={"count": 10, "window": "1s", "key": "k", "expire_action": "discard"})
    batcher.emit_many("d", [{"k": i} for i in range(3)])
    clock.advance("2s")
    sweeper = Sweeper(batcher)
    sweeper.run_once()
    assert (sweeper.cut, sweeper.discarded) == (0, 3)
    batcher.emit("d", {"k": "x"})
    clock.advance("2s")
    with caplog.at_level(logging.INFO, "distbatch"):
        (r,) = batcher.emit("d", {"k": "x"})  # closes the run-out window itself
    assert r.expired is not None and r.expired.discarded
    said = "batch_discarded binding=gone@v1 partition='x' events=1"
    assert any(m.startswith(said) for m in caplog.messages)
    ns = f"{batcher.keys.namespace}-cli"
    b = Batcher.from_url(redis_server.url, namespace=ns, handoff=False)
    b.register("f", version="v1", source="s", handler="m.h", batch={"count": 10, "window": "200ms"})
    args = ["--redis-url", redis_server.url, "--namespace", ns]
    assert CliRunner().invoke(cli, ["emit", "s", '{"n": 1}', *args]).exit_code == 0
    time.sleep(0.3)  # the window runs out, no sweeper: the next emit closes it
    out = CliRunner().invoke(cli, ["emit", "s", '{"n": 2}', *args])
    assert out.exit_code == 0 and json.loads(out.output.splitlines()[-1])["batches_fired"] == 1


def test_the_lateness_chart_says_when_it_covers_less_than_its_span(batcher: Batcher) -> None:
    """The sweepers keep the last 2,000 cuts: at more than ~3 expiries a second the "last ten
    minutes" held only the last few seconds, and said nothing of it (`n: 2000` for 3,600 cuts)."""
    from distbatch.stats import LATENESS_KEPT, lateness

    now = batcher.server_ms()
    key = batcher.keys.lateness
    batcher.client.rpush(key, *[f"{now - i * 1000} 5" for i in range(5)])  # newest first, as kept
    few = lateness(batcher, now)
    assert few["complete"] and few["since_ms"] == now - 4000 and few["last_minute"]["n"] == 5
    batcher.client.delete(key)
    batcher.client.rpush(key, *[f"{now - i} 5" for i in range(LATENESS_KEPT)])  # 2,000 cuts in 2 s
    full = lateness(batcher, now)
    assert not full["complete"] and full["since_ms"] == now - LATENESS_KEPT + 1
