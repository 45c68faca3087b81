"""The Lua scripts, read from `lua/` once per process and called by SHA.

redis-py's `Script` sends EVALSHA and falls back to loading the script on NOSCRIPT (a Redis
restart or SCRIPT FLUSH), in pipelines too. ``-- @include NAME`` lines pull in
``lua/includes/NAME.lua`` so shared helpers are written once.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from redis import Redis
from redis.commands.core import Script

_INCLUDE = re.compile(r"^-- @include (\w+)$", re.MULTILINE)
NAMES = (
    "accumulate", "due_buffers", "flush_expired", "register", "sync_registry", "unbind", "drain_buffers",
    "claim", "renew", "complete", "fail", "reclaim", "promote", "replay", "purge", "shard_lease",
)


@cache
def source(name: str) -> str:
    """The script with its includes expanded, each include once (includes may include)."""
    lua = files(__package__) / "lua"
    seen: set[str] = set()

    def expand(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            inc = m.group(1)
            if inc in seen:
                return ""
            seen.add(inc)
            return expand((lua / "includes" / f"{inc}.lua").read_text())

        return _INCLUDE.sub(one, text)

    return expand((lua / f"{name}.lua").read_text())


class Scripts:
    """One `Script` per atomic operation, bound to a client."""

    def __init__(self, client: Redis) -> None:
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))

    accumulate: Script
    due_buffers: Script
    flush_expired: Script
    register: Script
    sync_registry: Script
    unbind: Script
    drain_buffers: Script
    purge: Script
    shard_lease: Script
    claim: Script
    renew: Script
    complete: Script
    fail: Script
    reclaim: Script
    promote: Script
    replay: Script
