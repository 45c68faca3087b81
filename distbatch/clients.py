"""Redis clients from URLs, and the checks a client must pass before distbatch uses it."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis
import redis.asyncio

from .errors import ConfigError


def _secrets(url: str) -> list[str]:
    """The password parts of `url`: after the user in everything between `://` and the last `@`
    (a password with an unescaped `/`, `#` or `?` would cut `urlsplit`'s host short), and any
    `password=` query value."""
    _, sep, rest = url.partition("://")
    found = []
    if sep and "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        found.append(userinfo.partition(":")[2] or userinfo)
    found += re.findall(r"[?&][A-Za-z_]*password=([^&#]*)", url)  # ssl_password= too
    return [f for f in found if f]


def redacted(url: str, text: str | None = None) -> str:
    """`text` (default: `url` itself) with `url`'s password masked, whole or in the pieces a
    parser split it into: for error texts and logs."""
    out = url if text is None else text
    secrets = _secrets(url)
    for secret in secrets:
        for piece in sorted({secret, *re.split(r"[/#?@:]", secret)}, key=len, reverse=True):
            if len(piece) >= 6:
                out = out.replace(piece, "***")
            elif len(piece) >= 3 or piece == secret:  # short: whole words only (a user 'u' once
                # masked every u of the message: 'Invalid val***e for ...')
                out = re.sub(rf"(?<![A-Za-z0-9]){re.escape(piece)}(?![A-Za-z0-9])", "***", out)
    if secrets and text is not None:  # a parser's message quotes what it could not read: maybe a
        # piece of the password too short to find above; the option or port it names stays
        pieces = {p for s in secrets for p in (s, *re.split(r"[/#?@:]", s)) if p}

        def quoted(m: re.Match[str]) -> str:
            return "'***'" if pieces & {m.group(1), *re.split(r"[/#?@:]", m.group(1))} else m.group(0)
        out = re.sub(r"'([^']*)'", quoted, out)
    return out


@contextmanager
def parsing_url(url: str, field: str = "redis_url") -> Iterator[None]:
    """A URL redis-py cannot parse (a typo'd scheme, a bad port) becomes a `ConfigError` naming the
    field and the URL, its password masked (in redis-py's message too), instead of redis-py's bare
    ValueError."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as exc:
        said = redacted(url, str(exc))
        if "schemes" in said:  # redis-py lists its own; distbatch also takes a cluster's
            said += "; for a Redis Cluster, redis+cluster:// or rediss+cluster://"
        raise ConfigError(field, f"{field}={redacted(url)!r} is not a Redis URL: {said}") from None


def _check_db(url: str, field: str) -> None:
    """The database a `redis://` URL's path names: a number (none: 0), and on a cluster 0 only.
    redis-py reads `/abc` or `/O` as no database at all, and silently uses 0: another app's."""
    scheme = url.partition("://")[0]
    if scheme.removesuffix("+cluster") not in ("redis", "rediss"):
        return
    path = urlsplit(url).path
    if "@" in path:  # a password with an unescaped `/`: the path is part of it, never to be shown
        return
    db = path[1:] if path.startswith("/") else path
    if db and not (db.isascii() and db.isdigit()):
        raise ConfigError(field, redacted(url, f"{field}={redacted(url)!r}: the path {path!r} names no "
                                               "database (a number, e.g. /0)"))
    if db and int(db) != 0 and scheme.endswith("+cluster"):
        raise ConfigError(field, f"{field}={redacted(url)!r}: a Redis Cluster has database 0 only")


def _check_options(url: str, field: str) -> None:
    """Every query option of the URL one its connection takes: redis-py passes an unknown one (a
    typo, or `ssl_*` on a `redis://` URL) to the connection, and fails at its first command with
    a TypeError that names no URL. Making a connection (unconnected) finds it at once."""
    scheme, sep, rest = url.partition("://")
    kwargs = redis.connection.parse_url(f"{scheme.removesuffix('+cluster')}{sep}{rest}")  # type: ignore[no-untyped-call]
    cls: Any = kwargs.pop("connection_class", None) or (
        redis.connection.UnixDomainSocketConnection if "path" in kwargs else redis.connection.Connection)
    try:
        cls(**kwargs)
    except TypeError as exc:
        bad = re.search(r"keyword argument '([^']+)'", str(exc))
        name = bad.group(1) if bad else str(exc)
        hint = " (ssl_* options need rediss://)" if name.startswith("ssl_") and scheme.startswith("redis") \
            and not scheme.startswith("rediss") else ""
        raise ConfigError(field, f"{field}={redacted(url)!r}: {name!r} is no option of a {scheme}:// "
                                 f"connection{hint}") from None


_HOST_END = re.compile(r"(\[[^\]/]*\]|[^/?#@=&\[\]:]+)(:\d+/\d*|:\d+|/\d*)(\?[^@]*)?")
"""What follows the last `@` of a URL whose password holds a `/`, `?` or `#`: host and port or
database, as no query value reads."""


def _check_userinfo(url: str, field: str) -> None:
    """A password (or user) with an unescaped `/`, `?` or `#` ends the host early for every URL
    parser: redis-py connected to a host made of a piece of the password, and said so, that piece
    in clear, in every retry's log line. Refused here, naming the fix, the password masked. The
    tell: an `@` where a redis:// URL has none, in its path (a database number), its fragment, or
    its query before any `=` (a query value may hold one: `?client_name=app@host`)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.removesuffix("+cluster") not in ("redis", "rediss"):
        return  # unix:// paths may hold an `@`
    parts = urlsplit(url)
    query_head = parts.query.split("=", 1)[0]
    broken = "@" in parts.path or "@" in parts.fragment or "@" in query_head
    userinfo, at, host = rest.rpartition("@")
    if broken and at and any(c in userinfo for c in "/?#") and _HOST_END.fullmatch(host):
        raise ConfigError(field, f"{field}={redacted(url)!r}: its user or password holds a '/', '?' or "
                                 "'#', which ends a URL's host: percent-encode them ('/' as %2F, '?' as "
                                 "%3F, '#' as %23, '@' as %40, '%' as %25)")


_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")


def _check_files(url: str, field: str) -> None:
    """The TLS files a URL names are there to read: a missing one read as an outage ("Error 2
    connecting to ...: No such file or directory"), retried for ever and naming no file."""
    for name, path in parse_qsl(urlsplit(url).query):  # decoded as redis-py does: `+` is a space
        if name in _TLS_FILES:
            if not os.path.exists(path):
                raise ConfigError(field, f"{field}={redacted(url)!r}: {name}={path!r} does not exist")
            if not os.access(path, os.R_OK):
                raise ConfigError(field, f"{field}={redacted(url)!r}: {name}={path!r} cannot be read")


def check_url(url: str, field: str = "redis_url") -> None:
    """`ConfigError` (as `parsing_url`) for a URL redis-py cannot parse; connects to nothing."""
    scheme, sep, _ = url.partition("://")
    if sep and scheme.endswith("+cluster"):
        url, _more = cluster_nodes(url, field)
    with parsing_url(url, field):
        _check_userinfo(url, field)
        _check_db(url, field)
        _check_options(url, field)
        _check_files(url, field)


SOCKET_TIMEOUT_S = 5.0
"""A call's and a connect's longest wait, unless the URL or the caller says otherwise: redis-py 8
waits 5 s by default, redis-py 6 (the lowest this project supports) forever, so on a Redis that
hangs a lease renewal, a hand-off or a stop never ended."""


class Cluster(redis.RedisCluster):
    """redis-py's cluster client, but a call that timed out is not sent again by redis-py itself:
    its own loop sent it up to four times to the same node (the slot map still names a node that
    hangs), each after a socket timeout, under distbatch's own resend (`transport.once_more`), so
    an emit to a paused master blocked for two minutes and a worker's claim on one held up the
    other shards' batches. A refused connection is still retried (a failover under way)."""

    ERRORS_ALLOW_RETRY = tuple(e for e in redis.RedisCluster.ERRORS_ALLOW_RETRY  # type: ignore[assignment]
                               if e is not redis.exceptions.TimeoutError)


class AsyncCluster(redis.asyncio.RedisCluster):
    """redis.asyncio's cluster client, a timed-out call not sent again by redis-py itself (as
    `Cluster`)."""

    ERRORS_ALLOW_RETRY = tuple(e for e in redis.asyncio.RedisCluster.ERRORS_ALLOW_RETRY  # type: ignore[assignment]
                               if e is not redis.exceptions.TimeoutError)


def cluster_nodes(url: str, field: str = "redis_url") -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL may name several nodes to start from (`redis+cluster://h1:7000,h2:7000/`):
    the URL with its first alone, and the others as (host, port). One node alone was all a
    process could start from: a worker restarted while that node was down waited for it for ever,
    the cluster healthy."""
    scheme, sep, rest = url.partition("://")
    cut = [i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0]
    netloc, tail = rest[:min(cut, default=len(rest))], rest[min(cut, default=len(rest)):]
    auth, at, hosts = netloc.rpartition("@")
    first, *others = hosts.split(",")
    more = []
    for node in others:
        host, colon, port = node.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(field, f"{field}={redacted(url)!r}: {node!r} is no host:port of a "
                                     "cluster node (nodes are separated by commas)")
        more.append((host.strip("[]"), int(port)))
    return f"{scheme}{sep}{auth}{at}{first}{tail}", more


def connect(url: str, field: str = "redis_url", **options: Any) -> Any:
    """A client for `url`; `redis+cluster://` and `rediss+cluster://` give a RedisCluster (from
    any of the nodes it names, `cluster_nodes`). The URL's own `socket_timeout` /
    `socket_connect_timeout` win over `SOCKET_TIMEOUT_S`."""
    options.setdefault("socket_timeout", SOCKET_TIMEOUT_S)
    options.setdefault("socket_connect_timeout", SOCKET_TIMEOUT_S)
    scheme, sep, rest = url.partition("://")
    more: list[tuple[str, int]] = []
    if sep and scheme.endswith("+cluster"):
        url, more = cluster_nodes(url, field)
        rest = url.partition("://")[2]
    with parsing_url(url, field):
        _check_userinfo(url, field)
        _check_db(url, field)
        _check_options(url, field)
        _check_files(url, field)
        if sep and scheme.endswith("+cluster"):
            if more:
                options["startup_nodes"] = [redis.cluster.ClusterNode(h, p) for h, p in more]  # type: ignore[no-untyped-call]
            return Cluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}", **options)
        return redis.Redis.from_url(url, **options)


def cluster_unreachable(exc: BaseException) -> bool:
    """redis-py's `RedisClusterException` for no node answering (an outage, the node a URL
    names gone after a failover), not for a mistake (a node that is no cluster's)."""
    return isinstance(exc, redis.exceptions.RedisClusterException) and \
        "cluster mode is not enabled" not in str(exc).lower()


def is_cluster(client: Any) -> bool:
    return isinstance(client, redis.RedisCluster)


def check_client(client: Any) -> None:
    """A sync client that returns bytes: say clearly what is wrong with any other."""
    if isinstance(client, redis.asyncio.Redis) or inspect.iscoroutinefunction(
            getattr(client, "evalsha", None)):
        raise ConfigError(
            "client_async",
            f"client={client!r} is a redis.asyncio client; Batcher is the sync API and needs a "
            "redis.Redis (for asyncio: from distbatch.aio import AsyncBatcher)",
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


def check_async_client(client: Any) -> None:
    """A redis.asyncio client that returns bytes."""
    if not isinstance(client, redis.asyncio.Redis | redis.asyncio.RedisCluster):
        raise ConfigError(
            "client_sync" if callable(getattr(client, "evalsha", None)) else "client_type",
            f"client={client!r} is not a redis.asyncio client; AsyncBatcher needs one "
            "(for a sync redis.Redis: from distbatch import Batcher)",
        )
    kwargs = (client.connection_pool.connection_kwargs if isinstance(client, redis.asyncio.Redis)
              else client.connection_kwargs)
    if kwargs.get("decode_responses"):
        raise ConfigError(
            "client_decode_responses",
            "redis client has decode_responses=True; distbatch stores binary events and "
            "needs decode_responses=False",
        )


def sync_twin(client: Any) -> redis.Redis:
    """A sync client to the same Redis as a redis.asyncio one (RQ, which hands batches to the
    workers, is sync-only)."""
    kwargs = dict(client.connection_pool.connection_kwargs)
    if "server" in kwargs:  # fakeredis: the same in-memory server
        import fakeredis

        return fakeredis.FakeRedis(server=kwargs["server"])
    name = client.connection_pool.connection_class.__name__
    cls: type[redis.connection.AbstractConnection] = {
        "SSLConnection": redis.connection.SSLConnection,
        "UnixDomainSocketConnection": redis.connection.UnixDomainSocketConnection,
    }.get(name, redis.connection.Connection)
    accepted = {p for c in cls.__mro__ if "__init__" in vars(c)
                for p in inspect.signature(vars(c)["__init__"]).parameters}
    keep = {k: v for k, v in kwargs.items()
            if k in accepted and not k.startswith(("maint_", "orig_")) and k != "retry"}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=cls, **keep))
