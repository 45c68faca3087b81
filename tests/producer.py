"""A producer process: `python -m tests.producer URL NS SOURCE ID N [plain|dispatch|crash] [KEYS]`.

`dispatch` hands cut batches to the workers; `crash` SIGKILLs itself right after its first cut
is recorded and before the job is enqueued (the window the sweeper must cover).
"""

from __future__ import annotations

import os
import random
import signal
import sys

from distbatch import Batcher


def main() -> None:
    url, ns, source, pid, n = sys.argv[1:6]
    mode = sys.argv[6] if len(sys.argv) > 6 else "plain"
    keys = int(sys.argv[7]) if len(sys.argv) > 7 else 50
    queue_url = os.environ.get("DISTBATCH_QUEUE_URL")
    if mode == "crash":
        batcher = Batcher.from_url(url, namespace=ns, on_cut=lambda ids: os.kill(os.getpid(), signal.SIGKILL))
    else:
        batcher = Batcher.from_url(url, namespace=ns, handoff=mode == "dispatch", queue_url=queue_url)
    rng = random.Random(pid)
    i, total = 0, int(n)
    while i < total:
        size = 1 if mode == "crash" else rng.choice([1, 1, 5, 50, 200])
        chunk = [{"p": pid, "i": j, "k": f"key{rng.randrange(keys)}"} for j in range(i, min(total, i + size))]
        if len(chunk) == 1:
            batcher.emit(source, chunk[0])
        else:
            batcher.emit_many(source, chunk)
        i += len(chunk)
    print("done", pid, flush=True)


if __name__ == "__main__":
    main()
