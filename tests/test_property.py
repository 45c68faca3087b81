"""Random sequences of emit / advance / flush / drop: Redis and the reference model agree."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distbatch import Batcher, ConfigError, ManualClock
from distbatch.config import BatchConfig

from .model import Model

_ns = itertools.count()

binding_cfg = st.builds(
    lambda count, window, key, action: {"count": count, "window": f"{window}ms", "key": key,
                                        "expire_action": action},
    st.integers(1, 6), st.integers(1, 30).map(lambda w: w * 100), st.sampled_from([None, "k", "a.b"]),
    st.sampled_from(["fire_partial", "discard"]),
)
key_value = st.one_of(st.none(), st.integers(0, 3), st.sampled_from(["x", "", "{:}"]), st.booleans())
payload = st.fixed_dictionaries({}, optional={"k": key_value, "a": st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.fixed_dictionaries({"b": key_value}))})
op = st.one_of(
    st.tuples(st.just("emit"), st.lists(payload, min_size=1, max_size=5)),
    st.tuples(st.just("emit1"), payload),  # a single emit: accumulate_one.lua (one binding, one shard)
    st.tuples(st.just("advance"), st.integers(0, 20).map(lambda a: a * 100)),
    st.tuples(st.just("flush"), st.none()),
    st.tuples(st.just("drop"), st.integers(0, 2)),
)


def _cut(b) -> tuple:
    return (b.binding, b.partition_key, b.reason, b.discarded,
            tuple(e.payload["n"] for e in b.events))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(configs=st.lists(binding_cfg, min_size=1, max_size=3), ops=st.lists(op, max_size=40))
@pytest.mark.parametrize("shards", [1, 3])
def test_redis_matches_reference_model(client, shards, configs, ops) -> None:
    clock = ManualClock(0)
    batcher = Batcher(client, namespace=f"prop{next(_ns)}", clock=clock, handoff=False, shards=shards)
    model = Model()
    names = []
    for i, cfg in enumerate(configs):
        names.append(batcher.register(f"b{i}", version="v1", source="s", batch=cfg, handler="m.h"))
        model.bindings[names[-1]] = BatchConfig.parse(cfg)
    n = itertools.count()
    for kind, arg in ops:
        if kind == "emit":
            events = [{**p, "n": next(n)} for p in arg]
            got = [_cut(b) for r in batcher.emit_many("s", events) for b in (r.expired, r.batch) if b]
            want = [c for e in events for c in model.emit(clock.now_ms(), e)]
            assert got == want
        elif kind == "emit1":
            event = {**arg, "n": next(n)}
            got = [_cut(b) for r in batcher.emit("s", event) for b in (r.expired, r.batch) if b]
            assert got == model.emit(clock.now_ms(), event)
        elif kind == "advance":
            clock.advance(arg)
        elif kind == "flush":
            assert sorted(map(_cut, batcher.flush_expired()), key=repr) == sorted(
                model.flush(clock.now_ms()), key=repr)
        else:
            name = f"b{arg}@v1"
            if name not in names:  # never registered: an error, and nothing changes
                with pytest.raises(ConfigError):
                    batcher.drop(name)
                continue
            got_pending = sorted(e.payload["n"] for e in batcher.drop(name))
            assert got_pending == sorted(model.drop(name))
    for name in names:
        batcher.drop(name)
