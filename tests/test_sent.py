"""What a failed call's error says about whether Redis ran it (`sent.py`), and the waits for a
slot on the move (`transport.patient`): unit tests with stand-in calls."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, ClusterError, TryAgainError
from redis.retry import Retry

from distbatch import transport
from distbatch.sent import MaybeRan, NotSent, hides_retries, never_sent, resend_failed, unsure


def refused_error() -> redis.ConnectionError:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.") from exc
    except redis.ConnectionError as err:
        return err


class Client:
    """A stand-in with a retry policy of `retries` attempts."""

    def __init__(self, retries: int) -> None:
        self.retry = Retry(NoBackoff(), retries)


def test_a_refusal_is_not_sent_only_where_no_earlier_attempt_can_have_run() -> None:
    assert never_sent(refused_error()) and not never_sent(redis.TimeoutError("read timed out"))
    assert isinstance(resend_failed(refused_error(), refused_error()), NotSent)
    after_a_timeout = resend_failed(redis.TimeoutError("read timed out"), NotSent("refused"))
    assert not never_sent(after_a_timeout) and not isinstance(after_a_timeout, NotSent)
    assert not never_sent(resend_failed(redis.TimeoutError("t"), refused_error()))
    hidden = unsure(refused_error(), Client(3))
    assert isinstance(hidden, MaybeRan) and not never_sent(hidden) and hidden.__cause__ is not None
    assert unsure(refused_error(), Client(0)) is not hidden and never_sent(unsure(refused_error(), Client(0)))


def test_which_clients_resend_on_their_own() -> None:
    assert hides_retries(Client(3)) and not hides_retries(Client(0))
    assert not hides_retries(redis.Redis(retry=Retry(NoBackoff(), 0)))


def ttl_exhausted() -> ClusterError:
    return ClusterError("TTL exhausted.")


@pytest.mark.parametrize("retries", [0, 3])
def test_patient_waits_for_a_slot_on_the_move_then_says_what_ran(monkeypatch: pytest.MonkeyPatch,
                                                                 retries: int) -> None:
    monkeypatch.setattr(transport, "SLOT_MOVE_WAIT_S", 0.2)
    calls: list[float] = []

    def moving() -> Any:
        calls.append(time.monotonic())
        raise ttl_exhausted() if len(calls) % 2 else TryAgainError("TRYAGAIN")

    started = time.monotonic()
    with pytest.raises(redis.ConnectionError) as err:
        transport.patient(moving, Client(retries))
    assert 0.2 <= time.monotonic() - started < 0.5 and len(calls) >= 3
    assert isinstance(err.value, NotSent if retries == 0 else MaybeRan)
    assert transport.slot_moving(err.value.__cause__ or err.value)

    calls.clear()
    answers = iter([ttl_exhausted(), TryAgainError("TRYAGAIN"), "ok"])

    def settles() -> Any:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert transport.patient(settles, Client(retries)) == "ok"


@pytest.mark.parametrize(("error", "raised"), [(ClusterDownError("CLUSTERDOWN"), NotSent),
                                               (ClusterError("something else"), ClusterError)])
def test_patient_passes_other_cluster_errors_on_at_once(error: ClusterError, raised: type) -> None:
    """Not waited for; CLUSTERDOWN (the cluster down: the call ran nothing) as the outage it is,
    a `ConnectionError` its callers wait out, not a `ResponseError` taken for the call's own."""
    sent: list[int] = []

    def fails() -> Any:
        sent.append(1)
        raise error

    with pytest.raises(raised) as info:
        transport.patient(fails, Client(0))
    assert sent == [1] and (info.value is error or info.value.__cause__ is error)


def test_no_cluster_node_answering_is_an_outage_that_may_have_run() -> None:
    """redis-py raises `RedisClusterException` (no `ConnectionError`) when no node answers, also
    after it sent the call and the reply timed out: it may have run, whatever refused after."""
    from redis.exceptions import RedisClusterException

    def fails() -> Any:
        try:
            raise redis.ConnectionError("Error 111 connecting: Connection refused") from \
                ConnectionRefusedError(111, "refused")
        except redis.ConnectionError as refused:
            raise RedisClusterException("Redis Cluster cannot be connected") from refused

    with pytest.raises(redis.ConnectionError) as info:
        transport.patient(fails, Client(0))
    assert isinstance(info.value, MaybeRan) and not never_sent(info.value)


def test_a_call_that_waited_for_a_slot_is_not_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_twice` resends after a connection error, but not after the whole wait for a slot."""
    monkeypatch.setattr(transport, "SLOT_MOVE_WAIT_S", 0.1)
    sent: list[int] = []

    def moving() -> Any:
        sent.append(1)
        raise ttl_exhausted()

    started = time.monotonic()
    with pytest.raises(NotSent):
        transport._twice(lambda: transport.patient(moving, Client(0)))
    assert time.monotonic() - started < 0.3

    lost = iter([redis.ConnectionError("reply lost"), "ok"])

    def once_lost() -> Any:
        answer = next(lost)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert transport._twice(once_lost) == "ok"
