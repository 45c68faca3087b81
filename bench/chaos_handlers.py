"""The chaos soak's handler: every run of a batch reports itself to the recording Redis.

Workers allowlist `bench.chaos_handlers`; the recording Redis (`CHAOS_RECORD_URL`) is not the
system under test and is never restarted, so what it holds is the ground truth of what ran.

Two rows per run: one in `chaos:starts` when the handler starts (so a run cut short by a SIGKILL is
still seen) and one in `chaos:rows` when it ends, with the event ids. A run sleeps 20-50 ms
between the two, so two runs of one batch at the same time would overlap visibly.
"""

from __future__ import annotations

import json
import os
import random
import time
from functools import cache

import redis

from distbatch import Batch

STARTS = "chaos:starts"
ROWS = "chaos:rows"


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["CHAOS_RECORD_URL"])


def record(batch: Batch) -> None:
    run = {"batch": batch.id, "binding": batch.binding, "attempt": batch.attempt, "pid": os.getpid()}
    start = time.time()
    _client().rpush(STARTS, json.dumps({**run, "start": start}))
    time.sleep(random.uniform(0.02, 0.05))
    ids = [e.payload.get("id") for e in batch.events]
    _client().rpush(ROWS, json.dumps({**run, "reason": batch.reason, "events": ids, "start": start,
                                      "end": time.time()}))
