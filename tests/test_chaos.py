"""A short chaos soak (`bench.chaos`): 3 workers, 2 sweepers and 3 producers, all real processes,
under SIGKILL and SIGSTOP every 2-4 s and one restart of the Redis under test (AOF, fsync always).
About a minute of wall time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import DISCARD, PARTIAL, report, soak

SECONDS = 45


def _evidence(r: dict[str, Any]) -> str:
    keys = ("faults", "drain", "lost_by_binding", "lost_sample", "unaccounted", "duplicate_sample",
            "above_count_sample", "concurrent_sample", "not_rerun", "leftover_keys", "logs", "logdir")
    return json.dumps({k: r[k] for k in keys}, indent=1, default=str)


@pytest.mark.timeout(240)
def test_chaos_soak_loses_nothing_and_never_runs_a_batch_twice_at_once(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = soak(SECONDS, seed=7, drain_timeout=25, logdir=tmp_path)
    report(r)  # shown when the test fails
    evidence = _evidence(r)
    # the run exercised what it claims to
    faults = r["faults"]
    assert faults.get("worker:kill", 0) >= 1 and faults.get("worker:stop", 0) >= 1, evidence
    assert faults.get("redis:restart") == 1, evidence
    assert r["acked"] > 1000, evidence
    assert r["drain"]["drained"], evidence
    # the guarantees
    assert r["lost"] == 0, evidence
    assert r["unaccounted"] == {PARTIAL: 0, DISCARD: 0}, evidence
    assert r["duplicates"] == 0, evidence
    assert r["above_count"] == 0, evidence
    assert r["concurrent"] == 0, evidence
    assert r["not_rerun_count"] == 0, evidence
    assert time.monotonic() - t0 < 90
