"""Example producer for docker-compose: registers a trigger and emits a steady stream of events."""

from __future__ import annotations

import os
import random
import time

from distbatch import Batcher


def main() -> None:
    batcher = Batcher.from_url(os.environ.get("DISTBATCH_REDIS_URL", "redis://redis:6379/0"),
                               namespace=os.environ.get("DISTBATCH_NAMESPACE", "distbatch"))
    batcher.register("pr-digest", version="v1", source="pr.merged",
                     batch={"count": 10, "window": "2s", "key": "repo"},
                     handler="workers.handlers.print_batch")
    rate = float(os.environ.get("PRODUCER_RATE", "200"))
    n = 0
    while True:
        batcher.emit("pr.merged", {"repo": f"acme/repo{random.randrange(20)}", "number": n})
        n += 1
        time.sleep(1 / rate)


if __name__ == "__main__":
    main()
