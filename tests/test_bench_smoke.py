"""The benchmarks must not rot: run every one once in --quick mode (completion, not speed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from bench.common import RESULTS
from distbatch.testing import env_with_path


def test_quick_benchmarks_complete() -> None:
    shutil.rmtree(RESULTS / "quick", ignore_errors=True)  # every result below is from this run
    out = subprocess.run([sys.executable, "-m", "bench", "all", "--quick"], env=env_with_path(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ("ingest", "emit_path", "cut", "e2e", "lateness", "scaling", "memory", "worker"):
        assert f"== {name} (quick)" in out.stdout
        assert json.loads((RESULTS / "quick" / f"{name}.json").read_text())
    e2e = json.loads((RESULTS / "quick" / "e2e.json").read_text())
    assert all(r["lost"] == 0 for r in e2e["rows"] if r["side"] == "distbatch")


def test_the_rate_beside_a_producer_that_outran_the_worker_is_never_zero() -> None:
    """The quick `bench worker` divided by it: 300 batches emitted before the first started."""
    from bench.worker import started_per_s

    rows = [(100.0 + i, 1_100.0 + 10 * i) for i in range(100)]  # cut from 100 ms, started from 1.1 s
    assert started_per_s(rows, wall0=100.0, wall1=250.0) == 100 / ((1_100 + 990 - 100) / 1000)
    assert started_per_s(rows, wall0=100.0, wall1=1_195.0) == 10 / 1.095  # ten started by then
