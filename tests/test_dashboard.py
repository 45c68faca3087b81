"""The live dashboard in a real headless browser (Debian's chromium, driven by Playwright):
load it against a running system, check what it shows against Redis, replay a dead batch with a
click, and keep a screenshot in docs/."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distbatch import Batcher
from distbatch.errors import BatchNotFound
from distbatch.executor import Executor, Status
from distbatch.handlers import HandlerResolver
from distbatch.testing import RedisServer

from .processes import Procs, wait_for
from .test_serve import TOKEN, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def _system(url: str, namespace: str, tmp_path: Path) -> tuple[Batcher, Procs, list[str]]:
    """Bindings, traffic with a sweeper cutting partial windows, and two dead batches."""
    b = Batcher.from_url(url, namespace=namespace)
    b.register("orders", version="v1", source="orders", handler="tests.handlers.record",
               batch={"count": 5, "window": "300ms", "key": "shop"})
    b.register("audit", version="v2", source="orders", handler="tests.handlers.record",
               batch={"count": 500, "window": "1h", "key": "user"})
    b.register("payments", version="v1", source="payments", handler="tests.handlers.boom",
               batch={"count": 2, "window": "1h"}, retry={"attempts": 1})
    procs = Procs(url, namespace, tmp_path)
    procs.sweeper()
    for i in range(60):  # ~6 s of traffic: rates and lateness to chart
        b.emit_many("orders", [{"shop": f"shop-{j % 7}", "user": f"user-{(i + j) % 11}", "n": i}
                               for j in range(i % 9)])
        time.sleep(0.1)
    dead = []
    for card in range(4):
        (r,) = b.emit("payments", {"card": f"424{card}"})
        if r.batch is not None:
            claim = b.records.claim([r.batch.id], 10_000)
            assert claim is not None
            assert Executor(b.records, HandlerResolver(["tests.handlers"])).run(claim).status == Status.DEAD
            dead.append(r.batch.id)
    time.sleep(0.8)  # the last partial windows run out and the sweeper cuts them
    return b, procs, dead


def test_dashboard_shows_redis_and_replays_a_dead_batch(
    browser: Any, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    server = Server(redis_server.url, tmp_path, namespace)  # first: its rate history covers the traffic
    b, procs, (dead_id, purged_id) = _system(redis_server.url, namespace, tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url + "/")
        page.fill("#token", TOKEN)
        page.click("#login-form button")
        page.wait_for_selector(f'#dead tr[data-batch="{dead_id}"]')
        time.sleep(4.5)  # a few more samples of the rate history
        page.wait_for_function("document.body.dataset.loaded > 0")
        page.evaluate("refresh()")
        page.wait_for_timeout(300)

        def shown(selector: str) -> int:
            return int(page.inner_text(selector).replace(",", ""))

        counters = b.counters()
        assert shown("#stat-dead") == b.records.count("dead") == 2
        assert shown("#stat-ready") == b.records.count("ready")
        assert shown("#stat-open") == b.open_buffers()
        for binding in ("orders@v1", "audit@v2"):
            row = f'#bindings tr[data-binding="{binding}"]'
            assert shown(f"{row} td.events-in") == counters[f"events_in:{binding}"]
            assert shown(f"{row} td.cut-count") == counters.get(f"batches_count:{binding}", 0)
            assert shown(f"{row} td.cut-expired") == counters.get(f"batches_expired:{binding}", 0)
        assert counters["batches_expired:orders@v1"] > 0  # the sweeper cut partial windows
        assert "count 5" in page.inner_text('#bindings tr[data-binding="orders@v1"]')
        page.click(f'#dead tr[data-batch="{dead_id}"] summary')
        assert "THE BOOM LINE" in page.inner_text(f'#dead tr[data-batch="{dead_id}"] pre.traceback')
        assert "Traceback" in page.inner_text(f'#dead tr[data-batch="{dead_id}"] pre.traceback')
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        if os.environ.get("UPDATE_SCREENSHOT"):  # docs/dashboard.png: UPDATE_SCREENSHOT=1 pytest ...
            shutil.copy(shot, SCREENSHOT)

        page.click(f'#dead tr[data-batch="{dead_id}"] button.replay')
        page.wait_for_selector(f'#dead tr[data-batch="{dead_id}"]', state="detached")
        assert b.records.count("dead") == 1
        ready = [x.decode() for k in b.shards for x in b.client.zrange(k.ready, 0, -1)]
        assert dead_id in ready
        assert b.records.raw(dead_id)["attempt"] == 0  # fresh attempts
        wait_for(lambda: shown("#stat-dead") == 1, 5, "the page to show one dead batch")

        page.on("dialog", lambda dialog: dialog.accept())  # "Purge batch ... for good?"
        page.click(f'#dead tr[data-batch="{purged_id}"] button.purge')
        page.wait_for_selector(f'#dead tr[data-batch="{purged_id}"]', state="detached")
        assert b.records.count("dead") == 0
        with pytest.raises(BatchNotFound):
            b.records.raw(purged_id)
        wait_for(lambda: shown("#stat-dead") == 0, 5, "the page to show no dead batch")
        assert page.is_visible("#dead-empty")
    finally:
        server.stop()
        procs.stop_all()


def test_dashboard_data_needs_the_token(browser: Any, redis_server: RedisServer, namespace: str,
                                        tmp_path: Path) -> None:
    Batcher.from_url(redis_server.url, namespace=namespace)
    server = Server(redis_server.url, tmp_path, namespace)
    try:
        page = browser.new_page()
        with page.expect_response(lambda r: r.status == 401):  # the first look, with no token
            page.goto(server.url + "/")
        page.wait_for_selector("#login", state="visible")
        assert not page.is_visible("#app")
        page.wait_for_timeout(100)  # its handler has run
        assert page.inner_text("#error") == ""  # a first visit: no word of a refused token
        page.fill("#token", "x" * 40)
        page.click("#login-form button")
        page.wait_for_selector("#error:has-text('refused')")
        assert not page.is_visible("#app")
    finally:
        server.stop()
