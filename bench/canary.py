"""A process that only sleeps 1 ms at a time and notes each time it woke late: when it did, the
machine (not distbatch) kept runnable processes off the CPU. `bench worker` runs one beside its
latency rounds to say how much of the tail the machine's own stalls explain."""

from __future__ import annotations

import json
import sys
import time

STALL_MS = 5.0


def main(seconds: float, out: str) -> None:
    stalls: list[tuple[float, float]] = []  # (wall ms when the stall began, its length in ms)
    end = time.perf_counter() + seconds
    prev = time.perf_counter()
    while prev < end:
        time.sleep(0.001)
        now = time.perf_counter()
        late = (now - prev) * 1000 - 1.0
        if late > STALL_MS:
            stalls.append((time.time() * 1000 - (now - prev) * 1000, late))
        prev = now
    with open(out, "w") as f:
        json.dump(stalls, f)


if __name__ == "__main__":
    main(float(sys.argv[1]), sys.argv[2])
