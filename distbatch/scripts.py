"""The Lua scripts, read from `lua/` once per process and called by SHA.

Each call is a plain EVALSHA (sent straight on the connection for sync clients, `roundtrip`);
one that meets NOSCRIPT (a Redis restart or SCRIPT FLUSH) ran nothing and is sent again as EVAL
with the script's text, in pipelines too. ``-- @include NAME`` lines pull in
``lua/includes/NAME.lua`` so shared helpers are written once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from redis import Redis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError

from .roundtrip import execute, execute_one, supported
from .sent import after_resend, driven_by_redis_py, hides_retries

_INCLUDE = re.compile(r"^([ \t]*)-- @include (\w+)$", re.MULTILINE)
NAMES = (
    "accumulate", "accumulate_one", "due_buffers", "flush_expired", "register", "sync_registry", "unbind",
    "drain_buffers",
    "claim", "renew", "complete", "fail", "reclaim", "promote", "replay", "purge", "shard_lease",
)


@cache
def source(name: str) -> str:
    """The script with its includes expanded (includes may include)."""
    lua = files(__package__) / "lua"
    return expand((lua / f"{name}.lua").read_text(),
                  lambda inc: (lua / "includes" / f"{inc}.lua").read_text())


def expand(text: str, read: Callable[[str], str]) -> str:
    """``-- @include NAME`` lines replaced by the include's text. One at the top level is
    expanded once per script (its locals are then visible everywhere below it); an indented one
    is inside a function (a closure made only when needed), and what it defines is visible only
    there, so it is expanded again unless the top level has it, and is never taken as the top
    level's copy."""
    top: set[str] = set()

    def walk(text: str, nested: bool) -> str:
        def one(m: re.Match[str]) -> str:
            inc, inner = m.group(2), nested or bool(m.group(1))
            if inc in top:
                return ""
            if not inner:
                top.add(inc)
            return walk(read(inc), inner)

        return _INCLUDE.sub(one, text)

    return walk(text, False)


@cache
def sha_of(name: str) -> str:
    """The SHA1 Redis knows the script by (what `register_script` computes)."""
    return hashlib.sha1(source(name).encode()).hexdigest()


class Scripts:
    """One `Script` per atomic operation, bound to a client."""

    def __init__(self, client: Redis) -> None:
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))

    accumulate: Script
    accumulate_one: Script
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


def call(script: Script, keys: Sequence[Any], args: Sequence[Any], client: Any = None) -> Any:
    """`script(keys=..., args=..., client=...)` in one EVALSHA, sent straight on the connection
    (`roundtrip`) for a sync client; a script Redis lacks (a restart, SCRIPT FLUSH) answers
    NOSCRIPT having run nothing, and the call is sent again as EVAL with the script's text, as
    `pipelined` does."""
    c: Any = script.registered_client if client is None else client
    if supported(c):
        try:
            return execute_one(c, ("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:
            return execute_one(c, ("EVAL", script.script, len(keys), *keys, *args))
    with driven_by_redis_py(c):  # a cluster
        try:
            return c.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return c.eval(script.script, len(keys), *keys, *args)


async def acall(script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """`call` on redis.asyncio."""
    c: Any = script.registered_client
    with driven_by_redis_py(c):
        try:
            return await c.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await c.eval(script.script, len(keys), *keys, *args)


ScriptCall = tuple[Script, Sequence[Any], Sequence[Any]]  # (script, keys, args)


@dataclass(frozen=True, slots=True)
class Command:
    """A plain command among a pipeline's script calls: a blocking wait that the claim after it
    answers in the same round trip."""

    argv: tuple[Any, ...]


AsyncScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]


def pipelined(client: Any, calls: Sequence[ScriptCall | Command]) -> list[Any]:
    """Every call's reply (an error as its exception), in one round trip.

    redis-py's `Script` in a pipeline first sends SCRIPT EXISTS, a round trip of its own on every
    `execute`; here each call is a plain EVALSHA. A script Redis lacks (a restart, SCRIPT FLUSH)
    answers NOSCRIPT having run nothing, so exactly those calls are sent again, as EVAL with the
    script's text: one more round trip, on the connection that runs them (old fakeredis keeps
    loaded scripts per connection).
    """
    replies = _send(client, calls, by_text=False)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        for i, reply in zip(missing, _send(client, [calls[i] for i in missing], by_text=True), strict=True):
            replies[i] = reply
    return replies


def _send(client: Any, calls: Sequence[ScriptCall | Command], *, by_text: bool) -> list[Any]:
    if supported(client):
        return execute(client, [call.argv if isinstance(call, Command) else _argv(*call, by_text=by_text)
                                for call in calls])
    pipe = client.pipeline(transaction=False)
    for call in calls:
        if isinstance(call, Command):
            pipe.execute_command(*call.argv)
            continue
        script, keys, args = call
        if by_text:
            pipe.eval(script.script, len(keys), *keys, *args)
        else:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
    with driven_by_redis_py(client):
        return _seen(client, pipe.execute(raise_on_error=False))


def _seen(client: Any, replies: Sequence[Any]) -> list[Any]:
    """A pipeline's replies where redis-py may have sent it more than once (`after_resend`)."""
    return list(map(after_resend, replies)) if hides_retries(client) else list(replies)


def _argv(script: Script, keys: Sequence[Any], args: Sequence[Any], *, by_text: bool) -> tuple[Any, ...]:
    if by_text:
        return ("EVAL", script.script, len(keys), *keys, *args)
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


async def apipelined(client: Any, calls: Sequence[AsyncScriptCall]) -> list[Any]:
    """`pipelined` on redis.asyncio."""
    replies = await _asend(client, calls, by_text=False)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        again = await _asend(client, [calls[i] for i in missing], by_text=True)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return replies


async def _asend(client: Any, calls: Sequence[AsyncScriptCall], *, by_text: bool) -> list[Any]:
    with driven_by_redis_py(client):
        async with client.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                if by_text:
                    pipe.eval(script.script, len(keys), *keys, *args)
                else:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
            return _seen(client, await pipe.execute(raise_on_error=False))
