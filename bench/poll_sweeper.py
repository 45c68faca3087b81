"""Baseline for the lateness benchmark: a sweeper that polls on a fixed interval instead of
sleeping until the next deadline (what a cron-style flusher does)."""

from __future__ import annotations

import sys
import time

from distbatch import Batcher
from distbatch.sweeper import Sweeper


def main() -> None:
    url, ns, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
    batcher = Batcher.from_url(url, namespace=ns)
    sweeper = Sweeper(batcher)
    while True:
        sweeper.run_once()
        time.sleep(interval)


if __name__ == "__main__":
    main()
