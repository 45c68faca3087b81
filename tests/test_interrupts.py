"""SIGINT/SIGTERM taken by a watcher thread (`distbatch.interrupts`), in real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from .redis_server import env_with_path

_SCRIPT = textwrap.dedent("""
    import signal, sys, threading, time
    from distbatch.interrupts import taken_by_thread

    held = threading.Lock()   # what fakeredis's server lock was to RQ's handler
    seen = []

    def on_signal(signum):
        with held:  # a handler in the main thread would wait here for itself
            seen.append((signum, threading.current_thread() is threading.main_thread()))

    before = signal.getsignal(signal.SIGINT)
    with taken_by_thread(on_signal):
        print("ready", flush=True)
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            with held:          # the main thread holds the lock nearly all the time
                time.sleep(0.05)
    after = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    print(seen, signal.SIGINT in after, signal.getsignal(signal.SIGINT) is before, flush=True)
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_runs_its_reaction_on_a_thread_while_the_main_thread_holds_a_lock(signum: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT], env=env_with_path(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        # taken once, off the main thread; afterwards the mask and the handler are as before
        assert out.strip() == f"[({int(signum)}, False)] False True", out
    finally:
        if proc.poll() is None:
            proc.kill()


def _no_redis_url() -> dict[str, str]:
    """A child with no Redis URL given: the demo's embedded one (conftest points the variable at
    a closed port)."""
    env = env_with_path()
    env.pop("DISTBATCH_REDIS_URL", None)
    return env


@pytest.mark.parametrize(("signum", "after_s"), [(signal.SIGINT, 0.0), (signal.SIGINT, 0.7),
                                                 (signal.SIGINT, 1.4), (signal.SIGTERM, 1.0)])
def test_demo_ends_on_the_first_ctrl_c_with_its_summary(signum: int, after_s: float) -> None:
    """Ctrl-C once did nothing (RQ swallowed the stop that came between two jobs), and then hung
    the demo: RQ's handler ran inside fakeredis while it held its lock and wrote to Redis.
    The signal lands at a different point of the loop in each case: `after_s` after the first
    batch was delivered (a fixed time from the start fell, on a loaded machine, before anything
    was delivered, or into Python's own imports)."""
    import json

    proc = subprocess.Popen([sys.executable, "-m", "distbatch.cli", "demo", "--events", "100000",
                             "--rate", "500", "--print-batches"], env=_no_redis_url(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        while not (line := proc.stdout.readline()).startswith("batch "):  # counted, then printed
            assert line, "the demo ended before it delivered a batch"
        time.sleep(after_s)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        summary = json.loads(out[out.index("\n{") + 1:])  # after the batches it printed
        assert summary["interrupted"] is True and "Traceback" not in err
        assert 0 < summary["events_delivered"] <= summary["events_in"] < 100_000
        # what it did not deliver is said (before, `events_in` exceeded `events_delivered` by
        # events the summary named nowhere): dropped with its binding, or in batches left
        left = summary["events_in"] - summary["events_delivered"] - summary["events_dropped"]
        assert summary["events_in_batches_left"] == left >= 0
        assert (summary["batches_left"] > 0) == (left > 0), summary
    finally:
        if proc.poll() is None:
            proc.kill()
