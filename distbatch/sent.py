"""What a failed call's error says about whether Redis ran it.

`EmitError` sorts events into stored, uncertain and not sent, and a re-emit of "not sent" must
never store an event twice. A call is "not sent" only when no attempt of it can have reached
Redis. redis-py sends a failed call again by itself (its retry policy; on a cluster its
reinitialise-and-retry loop) and raises only the last attempt's error, so "connection refused"
speaks for the last attempt alone: where distbatch drives the connection it watches every
attempt (`roundtrip`); where redis-py does, a refusal after retries it may have made is
`MaybeRan`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

REFUSED: tuple[type[BaseException], ...] = (ConnectionRefusedError, socket.gaierror,
                                            redis.exceptions.MaxConnectionsError)  # no connection to send on


REFUSED_WRITE: tuple[type[BaseException], ...] = (redis.exceptions.OutOfMemoryError,
                                                 redis.exceptions.ReadOnlyError,
                                                 redis.exceptions.NoPermissionError)
"""What Redis answers a script at its first write (past `maxmemory`, on a replica) and never
after one, or before it runs at all (an ACL user without EVALSHA or without a key it names:
`NOPERM`; a command refused inside the script is a plain error naming the script, and may come
after writes): that attempt wrote nothing."""


class MaybeWrote(redis.ResponseError):
    """A refusal to write (`REFUSED_WRITE`) of a call sent again: the attempt before it may have
    run."""


class NotSent(redis.ConnectionError):
    """Nothing of the call can have run: every attempt failed to even connect (refused, unknown
    host), or was refused by a cluster slot that stayed on the move (`transport.patient`)."""


class MaybeRan(redis.ConnectionError):
    """The last attempt never reached Redis, but an earlier one may have, and run."""


def refused(exc: BaseException, sure: tuple[type[BaseException], ...] = REFUSED) -> bool:
    """The failure happened while connecting (redis-py raises its ConnectionError from the
    socket's own error, and only a connect can be refused or fail to resolve), or is one of
    `sure`: the attempt never reached Redis. Never past a `MaybeRan`."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MaybeRan):
            return False
        if isinstance(seen, sure):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def never_sent(exc: BaseException) -> bool:
    """Nothing of the call reached Redis."""
    return refused(exc, (NotSent, *REFUSED))


NOTHING_WRITTEN = "; nothing was written"
"""How the emit scripts end an error they raise before any write: an argument or a route that
is not the registered binding's. A resend gets the same (its first attempt had the same
arguments, and one that ran answers its resend `[-2]` before any check)."""


def not_stored(exc: BaseException) -> bool:
    """Nothing of the call was stored: never sent, or its one attempt refused before it wrote
    (an out-of-memory refusal was reported as "may or may not be stored", and so was a refusal
    the script says wrote nothing)."""
    return isinstance(exc, (NotSent, *REFUSED_WRITE)) or (
        isinstance(exc, redis.ResponseError) and not isinstance(exc, MaybeWrote)
        and str(exc).endswith(NOTHING_WRITTEN))


def after_resend(reply: Any) -> Any:
    """A reply to a call sent again: a refusal to write says nothing of the attempt before it."""
    if isinstance(reply, REFUSED_WRITE):
        err = MaybeWrote(f"{reply} (the call was sent again: the attempt before may have run)")
        err.__cause__ = reply
        return err
    return reply


def hides_retries(client: Any) -> bool:
    """redis-py itself may send a failed call again on this client, unseen by its caller."""
    attempts = getattr(client, "cluster_error_retry_attempts", None)  # a cluster, redis-py 5
    if attempts is not None:
        attempts += getattr(client, "connection_error_retry_attempts", 0)  # asyncio's, redis-py 5
    else:
        retry = getattr(client, "retry", None)  # a cluster, redis-py 6+
        if retry is None and callable(getattr(client, "get_retry", None)):
            retry = client.get_retry()  # a plain client: its connections' policy
        attempts = getattr(retry, "_retries", 0) if retry is not None else 0
    return bool(attempts)


def unsure(exc: BaseException, client: Any) -> BaseException:
    """`exc` from a call redis-py drove on `client`: a refusal becomes `MaybeRan` where redis-py
    may have sent the call before."""
    if refused(exc) and hides_retries(client):
        err = MaybeRan(f"{exc}; redis-py may have sent the call before, and Redis run it")
        err.__cause__ = exc
        return err
    return exc


@contextmanager
def driven_by_redis_py(client: Any) -> Iterator[None]:
    """Around a call redis-py sends (its own retries out of sight): its connection error as
    `unsure` makes it."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise unsure(exc, client)  # noqa: B904 (its cause is set)
    except REFUSED_WRITE as exc:
        if hides_retries(client):  # redis-py may have sent it before
            raise after_resend(exc)  # noqa: B904 (its cause is set)
        raise


def resend_failed(first: BaseException, second: BaseException) -> BaseException:
    """The error to report after a call and its resend both failed."""
    if never_sent(first) and never_sent(second):
        return second if isinstance(second, NotSent) else NotSent(str(second))
    if never_sent(second):  # the first attempt may have run
        return MaybeRan(str(second))
    return second
