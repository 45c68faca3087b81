"""A producer process for the multi-process tests: `python -m tests.producer URL NS SOURCE ID N`."""

from __future__ import annotations

import random
import sys

from distbatch import Batcher


def main() -> None:
    url, ns, source, pid, n = sys.argv[1:6]
    batcher = Batcher.from_url(url, namespace=ns)
    rng = random.Random(pid)
    i, total = 0, int(n)
    while i < total:
        size = rng.choice([1, 1, 5, 50, 200])
        chunk = [{"p": pid, "i": j, "k": f"key{rng.randrange(50)}"} for j in range(i, min(total, i + size))]
        if len(chunk) == 1:
            batcher.emit(source, chunk[0])
        else:
            batcher.emit_many(source, chunk)
        i += len(chunk)
    print("done", pid, flush=True)


if __name__ == "__main__":
    main()
