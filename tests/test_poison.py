"""A record that cannot be decoded never takes innocent events down silently: what cannot
round-trip is refused at emit, and a poisoned record (a hostile writer) goes dead at once with a
clear error, listable and showable."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from distbatch import Batcher, PayloadError
from distbatch.cli import main as cli
from distbatch.executor import Executor, Status
from distbatch.handlers import HandlerResolver

from .redis_server import RedisServer


@pytest.mark.parametrize("payload", [{"k": "x", (1, 2): "y"}, {"nested": {(1,): 1}}])
def test_payload_that_cannot_round_trip_is_refused_and_stores_nothing(batcher: Batcher, client,
                                                                        payload) -> None:
    batcher.register("d", version="v1", source="s", handler="m.h", batch={"count": 2, "window": "1h"})
    with pytest.raises(PayloadError) as err:
        batcher.emit_many("s", [{"ok": 1}, payload])
    assert err.value.code == "payload_unencodable"
    assert not client.exists(batcher.keys.buffer("d@v1", None))


def test_poisoned_record_goes_dead_at_once_and_the_cli_shows_it(redis_server: RedisServer,
                                                                 namespace: str) -> None:
    b = Batcher.from_url(redis_server.url, namespace=namespace, handoff=False)
    b.register("d", version="v1", source="s", handler="m.h", batch={"count": 1, "window": "1h"},
               retry={"attempts": 5})
    (r,) = b.emit("s", {"n": 1})
    assert r.batch is not None
    poisoned = b.records.keys_for(r.batch.id).rec_events
    b.client.hset(poisoned, r.batch.id, b"\xc1\xc1garbage")  # a hostile writer
    claim = b.records.claim([r.batch.id], 10_000)
    assert claim is not None and claim.error is not None
    out = Executor(b.records, HandlerResolver(["m"])).run(claim)
    assert out.status == Status.POISON and out.attempt == 1
    assert b.client.zscore(b.records.keys_for(r.batch.id).dead, r.batch.id) is not None
    args = ["--redis-url", redis_server.url, "--namespace", namespace]
    listed = CliRunner().invoke(cli, ["dead", "list", *args])
    assert listed.exit_code == 0, listed.output
    row = json.loads(listed.output)
    assert row["id"] == r.batch.id and "undecodable batch record" in row["error"]
    shown = CliRunner().invoke(cli, ["dead", "show", r.batch.id, *args])
    assert shown.exit_code == 0, shown.output
    assert "cannot decode" in json.loads(shown.output)["events"]
