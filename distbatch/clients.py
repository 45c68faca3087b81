"""Redis clients from URLs, and the checks a client must pass before distbatch uses it."""

from __future__ import annotations

import inspect
from typing import Any

import redis
import redis.asyncio

from .errors import ConfigError


def connect(url: str, **options: Any) -> Any:
    """A client for `url`; `redis+cluster://` and `rediss+cluster://` give a RedisCluster."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.endswith("+cluster"):
        return redis.RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}", **options)
    return redis.Redis.from_url(url, **options)


def is_cluster(client: Any) -> bool:
    return isinstance(client, redis.RedisCluster)


def check_client(client: Any) -> None:
    """A sync client that returns bytes: say clearly what is wrong with any other."""
    if isinstance(client, redis.asyncio.Redis) or inspect.iscoroutinefunction(
            getattr(client, "evalsha", None)):
        raise ConfigError(
            "client_async",
            f"client={client!r} is a redis.asyncio client; Batcher is the sync API and needs a "
            "redis.Redis (an asyncio AsyncBatcher is not available yet)",
        )
    if not callable(getattr(client, "evalsha", None)):
        raise ConfigError("client_type", f"client={client!r} is not a redis.Redis client")
    kwargs = (client.get_connection_kwargs() if hasattr(client, "get_connection_kwargs")
              else client.get_default_node().redis_connection.get_connection_kwargs())
    if kwargs.get("decode_responses"):
        raise ConfigError(
            "client_decode_responses",
            "redis client has decode_responses=True; distbatch stores binary events and "
            "needs decode_responses=False",
        )
