"""Whether the Redis holding a namespace may evict its keys, said where an operator looks.

Past `maxmemory` an evicting policy drops keys in silence: with `allkeys-*` buffers, batch
records, the deadlines and the bindings themselves (a review measured 9,405 of 15,001
acknowledged events gone, none delivered, and no process saying why); with `volatile-*` the keys
that carry a TTL, which are the ones that make a resent call run once. `noeviction` refuses the
write instead, and distbatch reports that as not stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis

log = logging.getLogger("distbatch")


def risk_of(config: Mapping[Any, Any], data_only: bool = False) -> str | None:
    """The warning for one server's `CONFIG GET maxmemory*`, or None where nothing is evicted
    (`data_only`: or only keys with a TTL are, which costs a resent call its run-once, not data:
    `/healthz` is degraded by the first alone, managed Redis often defaulting to the second)."""
    def text(x: Any) -> str:
        return x.decode() if isinstance(x, bytes) else str(x)

    values = {text(k): text(v) for k, v in config.items()}
    policy = values.get("maxmemory-policy", "noeviction")
    try:
        limit = int(values.get("maxmemory", "0"))
    except ValueError:
        limit = 0
    if policy == "noeviction" or limit <= 0:  # no limit: no eviction, whatever the policy
        return None
    if data_only and not policy.startswith("allkeys"):
        return None
    lost = ("distbatch's buffers, batch records and bindings" if policy.startswith("allkeys")
            else "distbatch's keys with a TTL, which make a resent emit, drop or HTTP retry run once")
    return (f"Redis evicts past maxmemory={limit} bytes (maxmemory-policy={policy}): it would drop "
            f"{lost} in silence; set maxmemory-policy noeviction (a full Redis then "
            "refuses emits, reported as not stored)")


def _risk(reply: Any, data_only: bool = False) -> str | None:
    """A reply of one server, or a cluster's {node: reply}: the first risk found."""
    if reply and all(isinstance(v, Mapping) for v in reply.values()):
        return next(filter(None, (risk_of(v, data_only) for v in reply.values())), None)
    return risk_of(reply or {}, data_only)


def _where(client: Any) -> dict[str, Any]:
    """`config_get`'s options: a cluster's every primary (its default asks one node)."""
    for cluster in (redis.RedisCluster, redis.asyncio.RedisCluster):
        if isinstance(client, cluster):
            return {"target_nodes": cluster.PRIMARIES}
    return {}


def eviction_risk(client: Any, data_only: bool = False) -> str | None:
    """None also where CONFIG is refused (an ACL user without it, a managed Redis that renamed
    it): unknown is not said to be a risk."""
    try:
        return _risk(client.config_get("maxmemory*", **_where(client)), data_only)
    except redis.RedisError:
        return None


async def eviction_risk_async(client: Any, data_only: bool = False) -> str | None:
    """`eviction_risk` on a `redis.asyncio` client."""
    try:
        return _risk(await client.config_get("maxmemory*", **_where(client)), data_only)
    except redis.RedisError:
        return None


def warn_if_evicting(client: Any, which: str = "") -> str | None:
    """Log the risk once (a long-running process's start); returns it. `which`: the option
    naming another Redis than the namespace's (`--queue-url`)."""
    risk = eviction_risk(client)
    if risk is not None:
        log.warning("redis_evicts: %s%s", f"{which}: " if which else "", risk,
                    extra={"event": "redis_evicts"})
    return risk
