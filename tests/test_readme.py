"""The README's library examples run as written (against a server of their own instead of
localhost): the new-user review pasted the sync one and got a NameError (`payloads` was never
defined)."""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .redis_server import RedisServer

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """The examples use the default namespace: a server of their own."""
    server = RedisServer().start()
    yield server
    server.cleanup()


def _block(heading: str) -> str:
    """The first ```python block after `heading`."""
    after = README[README.index(heading):]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match, heading
    return match.group(1)


def test_the_sync_example_runs_as_written(own_server: RedisServer) -> None:
    code = _block("### Sync library").replace("redis://localhost:6379/0", own_server.url)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md (sync)", "exec"), scope)
    assert len(scope["results"]) == 5  # type: ignore[arg-type]
    # acme/web's first three made a batch (count 3); the rest was still buffered at the drop
    assert sorted(e.payload["number"] for e in scope["pending"]) == [3, 4, 17]  # type: ignore[attr-defined]


def test_the_async_example_runs_as_written(own_server: RedisServer) -> None:
    body = _block("### Async library").replace("redis://localhost:6379/0", own_server.url)
    code = "async def example():\n" + textwrap.indent(body, "    ") + "    return results\n"
    scope: dict[str, object] = {}
    exec(compile(code, "README.md (async)", "exec"), scope)
    assert len(asyncio.run(scope["example"]())) == 5  # type: ignore[operator]
