"""Every config error of SPEC §1: a ConfigError (a ValueError) with a code, naming field and value."""

from __future__ import annotations

from datetime import timedelta

import pytest

from distbatch import Batcher, ConfigError
from distbatch.config import BatchConfig, RetryPolicy, parse_duration


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> str:
    """Every behaviour test here runs on Batcher and on AsyncBatcher."""
    return str(request.param)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("250ms", 250), ("30s", 30_000), ("10m", 600_000), ("2h", 7_200_000), ("1d", 86_400_000),
     ("1h30m", 5_400_000), ("1m30s500ms", 90_500), (" 2S ", 2000), ("1.5s", 1500),
     (timedelta(seconds=2), 2000)],
)
def test_durations(text: object, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    ("batch", "code", "names"),
    [
        ({"window": "1s"}, "count_missing", "count"),
        ({"count": True, "window": "1s"}, "count_type", "True"),
        ({"count": "3", "window": "1s"}, "count_type", "'3'"),
        ({"count": 2.0, "window": "1s"}, "count_type", "2.0"),
        ({"count": 0, "window": "1s"}, "count_range", "count=0"),
        ({"count": -4, "window": "1s"}, "count_range", "-4"),
        ({"count": 3}, "window_missing", "window"),
        ({"count": 3, "window": 10}, "window_type", "window=10"),
        ({"count": 3, "window": [1]}, "window_type", "[1]"),
        ({"count": 3, "window": "10 minutes"}, "window_format", "'10 minutes'"),
        ({"count": 3, "window": "5x"}, "window_format", "'5x'"),
        ({"count": 3, "window": "10m10m"}, "window_format", "'10m10m'"),  # was 20 minutes
        ({"count": 3, "window": "30m1h"}, "window_format", "'30m1h'"),  # was 90 minutes
        ({"count": 3, "window": timedelta(microseconds=1500)}, "window_format", "whole number of milli"),
        ({"count": 3, "window": ""}, "window_format", "''"),
        ({"count": 3, "window": "0s"}, "window_range", "'0s'"),
        ({"count": 3, "window": "36501d"}, "window_range", "'36501d'"),  # past 100 years
        ({"count": 3, "window": "9" * 400 + "s"}, "window_range", "window='999"),  # past a float
        ({"count": 3, "window": timedelta(days=999_999_999)}, "window_range", "window"),
        ({"count": 3, "window": timedelta(0)}, "window_range", "window"),
        ({"count": 3, "window": timedelta(seconds=-1)}, "window_range", "window"),
        ({"count": 3, "window": "1s", "key": 5}, "key_type", "key=5"),
        ({"count": 3, "window": "1s", "key": "a..b"}, "key_invalid", "'a..b'"),
        ({"count": 3, "window": "1s", "key": ".repo"}, "key_invalid", "'.repo'"),
        ({"count": 3, "window": "1s", "expire_action": "explode"}, "expire_action_invalid",
         "'explode'"),
        ({"count": 3, "window": "1s", "colour": "red"}, "batch_unknown_field", "colour"),
        ([("count", 3)], "batch_type", "batch="),
        ("count=3", "batch_type", "'count=3'"),
    ],
)
def test_config_errors(batch: object, code: str, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        BatchConfig.parse(batch)
    assert isinstance(info.value, ValueError)
    assert info.value.code == code
    assert names in str(info.value)


def test_expire_action_message_lists_valid_values() -> None:
    with pytest.raises(ConfigError, match=r"discard.*fire.*fire_partial"):
        BatchConfig.parse({"count": 1, "window": "1s", "expire_action": "nope"})


def test_key_whitespace_means_no_key_and_aliases() -> None:
    assert BatchConfig.parse({"count": 1, "window": "1s", "key": "  "}).key is None
    assert BatchConfig.parse({"count": 1, "window": "1s", "key": " repo "}).key == "repo"
    assert BatchConfig.parse({"count": 1, "window": "1s", "expire_action": "fire"}) == BatchConfig(
        1, 1000, None, "fire_partial")


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [({"id": "a b"}, "id_invalid"), ({"version": ""}, "version_invalid"),
     ({"source": "has space"}, "source_invalid"), ({"handler": "not a path"}, "handler_invalid"),
     ({"retry": {"attempts": 0}}, "retry_attempts"), ({"retry": {"backoff": "x"}}, "backoff_format")],
)
def test_register_rejects_bad_fields_and_writes_nothing(
    batcher: Batcher, client, kwargs: dict, code: str
) -> None:
    args = {"id": "d", "version": "v1", "source": "s", "handler": "m.h",
            "batch": {"count": 1, "window": "1s"}, **kwargs}
    ident = args.pop("id")
    before = sorted(client.keys(batcher.keys.base + "*"))  # the layout, stored when first used
    with pytest.raises(ConfigError) as info:
        batcher.register(ident, **args)
    assert info.value.code == code
    assert sorted(client.keys(batcher.keys.base + "*")) == before
    assert not [k for k in before if k != batcher.keys.meta.encode()]


def test_same_config_again_is_noop_different_is_conflict(batcher: Batcher, client) -> None:
    cfg = {"count": 3, "window": "10m", "key": "repo", "expire_action": "fire"}
    assert batcher.register("d", version="v1", source="s", batch=cfg, handler="m.h") == "d@v1"
    version = client.get(batcher.keys.registry_version)
    same = {"count": 3, "window": "600s", "key": "repo", "expire_action": "fire_partial"}
    assert batcher.register("d", version="v1", source="s", batch=same, handler="m.h") == "d@v1"
    assert client.get(batcher.keys.registry_version) == version
    with pytest.raises(ConfigError) as info:
        batcher.register("d", version="v1", source="s", batch={**cfg, "count": 4}, handler="m.h")
    assert info.value.code == "binding_conflict" and "d@v1" in str(info.value)
    assert "batch.count: 3 stored, 4 asked" in str(info.value)  # the field that differs, named
    assert batcher.register("d", version="v2", source="s", batch={**cfg, "count": 4},
                            handler="m.h") == "d@v2"
    assert set(batcher.bindings()) == {"d@v1", "d@v2"}
    assert batcher.bindings()["d@v1"].batch.count == 3


@pytest.mark.parametrize(("retry", "named"), [
    ({"timeout": "0ms"}, "retry.timeout='0ms'"), ({"backoff": "soon"}, "retry.backoff='soon'"),
    ({"max_backoff": 5}, "retry.max_backoff=5"),
])
def test_a_bad_duration_is_named_as_the_user_wrote_it(retry: dict, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy.parse(retry)
    assert str(info.value).startswith(named) and "batch." not in str(info.value)


def test_a_bad_duration_option_is_named_by_its_flag() -> None:
    from click.testing import CliRunner

    from distbatch.cli import main as cli

    out = CliRunner().invoke(cli, ["stats", "--watch", "--interval", "0ms"])
    assert out.exit_code == 2 and "--interval='0ms' must be longer than 0ms" in out.output
    demo = CliRunner().invoke(cli, ["demo", "--rate", "0"])
    assert demo.exit_code == 2 and "--rate" in demo.output and "Traceback" not in demo.output


def test_a_backoff_past_a_float_is_the_cap_not_an_overflow() -> None:
    """Try 1025 at the default factor 2 once raised OverflowError out of the worker's failure path,
    so the batch went through lease expiry instead of its backoff."""
    policy = RetryPolicy.parse({"attempts": 2000, "max_backoff": "5m"})
    assert policy.delay_ms(1025) == policy.delay_ms(5000) == 300_000
    assert policy.delay_ms(1) == policy.backoff_ms


@pytest.mark.parametrize("text", ["٣s", "1٠ms", "²s", "1.٥s"])
def test_a_duration_takes_ascii_digits_only(text: str) -> None:
    """`\\d` matched any Unicode digit: '٣s' (Arabic-Indic three) was taken as 3 s, unseen."""
    with pytest.raises(ConfigError) as info:
        parse_duration(text)
    assert info.value.code == "window_format" and repr(text) in str(info.value)


@pytest.mark.parametrize(("retry", "named"), [
    ({"backoff": "10s", "max_backoff": "1s"}, "retry.max_backoff='1s' is shorter than retry.backoff='10s'"),
    ({"max_backoff": "500ms"},
     "retry.max_backoff='500ms' is shorter than the default retry.backoff (1000ms)"),
])
def test_a_cap_below_the_backoff_is_refused(retry: dict, named: str) -> None:
    """Every try would have waited the cap, not the backoff the user wrote."""
    with pytest.raises(ConfigError) as info:
        RetryPolicy.parse(retry)
    assert info.value.code == "max_backoff_range" and str(info.value).startswith(named)


def test_a_backoff_past_the_default_cap_is_waited_in_full() -> None:
    policy = RetryPolicy.parse({"backoff": "10m"})
    assert policy.delay_ms(1) == 600_000 and policy.max_backoff_ms == 600_000
    assert RetryPolicy.parse({"backoff": "1s"}).max_backoff_ms == RetryPolicy().max_backoff_ms


def test_a_stored_cap_below_the_backoff_still_reads() -> None:
    """A definition registered before that was refused stays readable by workers (the cap wins)."""
    from distbatch.config import Binding

    stored = {"id": "d", "version": "v1", "source": "s", "handler": "m.h",
              "batch": {"count": 1, "window_ms": 1000, "key": None, "expire_action": "fire_partial"},
              "retry": {"attempts": 3, "backoff_ms": 10_000, "backoff_factor": 2.0, "max_backoff_ms": 1000}}
    binding = Binding.from_dict(stored)
    assert binding.retry.delay_ms(1) == 1000
    with pytest.raises(ConfigError):
        Binding.build("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1s"},
                      retry={"backoff": "10s", "max_backoff": "1s"})
