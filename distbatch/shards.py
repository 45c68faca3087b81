"""Which shard a buffer lives on, and where the shards live.

A namespace is split into N shards, each with its own hash tag and so its own cluster slot:
buffers, deadlines, batch records, ready/running/dead sets and counters. N is fixed when the
namespace is first used and stored in ``{ns}:meta``, so every instance agrees; asking for another
N is a clear error. A buffer's shard is a stable hash of its member, so one partition's buffer
never moves. Shard tags are chosen so their slots spread evenly over the slot space: on a cluster
whose masters own equal slot ranges (what `redis-cli --cluster create` makes), N shards land
evenly on the masters.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.crc import key_slot

from .errors import ConfigError, short
from .keys import Keys
from .ops import Cmd, Proc

SLOTS = 16384


def shard_of(member: bytes, shards: int) -> int:
    """Stable for a member: the same buffer always goes to the same shard."""
    return zlib.crc32(member) % shards if shards > 1 else 0


def tags_for(namespace: str, shards: int) -> list[str]:
    """One hash tag per shard; shard s gets a tag whose slot lies in the s-th Nth of the slots."""
    if shards == 1:
        return ["{" + namespace + "}"]
    tags = []
    for s in range(shards):
        lo, hi = s * SLOTS // shards, (s + 1) * SLOTS // shards
        for x in range(1_000_000):
            tag = "{" + f"{namespace}:{s}:{x}" + "}"
            if lo <= key_slot(tag.encode()) < hi:
                tags.append(tag)
                break
    return tags


def batch_id_shard(batch_id: str) -> int:
    """Batch ids are `<seq>` on a one-shard namespace, `<shard>.<seq>` otherwise."""
    head, dot, _ = batch_id.partition(".")
    return int(head) if dot and head.isascii() and head.isdigit() else 0


@dataclass(frozen=True, slots=True)
class Layout:
    namespace: str
    tags: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.tags)

    @property
    def keys(self) -> list[Keys]:
        return [Keys(self.namespace, s, t) for s, t in enumerate(self.tags)]

    def store(self) -> Cmd:
        """Store this layout unless one is: on first use, and again from every process that holds
        it (workers', sweepers' heartbeats, an app that finds its bindings gone) after Redis lost
        its data. Before, the heartbeats of running workers came back without it, and every
        instance started after that was refused (`layout_missing`) for good."""
        return Cmd("hsetnx", (Keys(self.namespace).meta, "tags", json.dumps(list(self.tags))))

    def id_prefix(self, shard: int) -> str:
        return "" if self.count == 1 else f"{shard}."

    @classmethod
    def load(cls, client: Any, namespace: str, shards: int | None, fix: bool = True) -> Layout:
        """`read` on a sync client."""
        from .syncio import SyncDriver

        return SyncDriver(client).run(cls.read(namespace, shards, lambda: default_shards(client), fix))

    @classmethod
    def read(cls, namespace: str, shards: int | None, default: Callable[[], int],
             fix: bool = True) -> Proc[Layout]:
        """Read the namespace's layout, fixing it on first use (`shards`, default `default()`: 1 on
        one Redis, the number of masters on a cluster). One shard is stored too: an instance that
        settled on one without a word let a later one fix four, and the two never met again
        (workers started before the app never saw its batches). `fix=False` (a look from
        `stats`, say) stores nothing: it reads what is there, or what would be."""
        k = Keys(namespace)
        raw = yield Cmd("hgetall", (k.meta,))
        if raw:
            tags = _stored_tags(namespace, raw.get(b"tags"), k.meta)
        else:
            want = shards or default()
            if isinstance(want, bool) or not isinstance(want, int) or want < 1:
                raise ConfigError("shards_invalid", f"shards={want!r} must be an integer >= 1")
            if (yield Cmd("exists", (k.bindings, k.registry_version))):
                want = 1  # in use before layouts were stored: a registry on the {ns} tag is one shard
            elif shards is None and (yield Cmd("exists", (k.workers, k.sweepers, k.lateness))):
                raise ConfigError(  # its registry lives on shard tags no one can name now
                    "layout_missing",
                    f"namespace={namespace!r} is in use (workers', sweepers' or lateness keys on "
                    f"{{{namespace}}}) but its layout {k.meta} is gone (deleted, evicted: run Redis "
                    "with maxmemory-policy noeviction; or lost in a restart without persistence, "
                    "with no worker or sweeper running to store it again; or never stored, by "
                    "processes of a version before 2026-11-27 on one shard): start one instance "
                    "with the shards it had (shards=N, --shards N; 1 for such a version) to store "
                    "it again; nothing was written",
                )
            tags = tuple(tags_for(namespace, want))
            if fix:
                yield cls(namespace, tags).store()
                tags = _stored_tags(namespace, (yield Cmd("hget", (k.meta, "tags"))), k.meta)
        if shards is not None and shards != len(tags):
            raise ConfigError(
                "shards_mismatch",
                f"namespace={namespace!r} has {len(tags)} shard(s), fixed when it was first used "
                f"(by the first app, worker or sweeper on it); this instance asked for "
                f"shards={shards}: use the same number everywhere (workers and sweepers: --shards, "
                "DISTBATCH_SHARDS), or a new namespace",
            )
        return cls(namespace, tags)


def _stored_tags(namespace: str, raw: Any, key: str) -> tuple[str, ...]:
    """The layout's tags as stored, if distbatch wrote them: exactly `tags_for` the namespace and
    their number. Anything else (a hostile writer's) would send every key of a shard elsewhere,
    or fail deep inside the first call: refused here, naming the key."""
    try:
        tags = json.loads(raw)
        if isinstance(tags, list) and 1 <= len(tags) <= SLOTS and tags == tags_for(namespace, len(tags)):
            return tuple(tags)
    except (TypeError, ValueError, RecursionError):
        pass
    raise ConfigError("layout_unreadable",
                      f"{key} field 'tags' holds no layout distbatch wrote for namespace={namespace!r}: "
                      f"{short(raw)}")


def default_shards(client: Any) -> int:
    if isinstance(client, redis.RedisCluster):
        return max(1, len(client.get_primaries()))  # type: ignore[no-untyped-call]
    return 1
