"""Deployment entry point: `python -m workers.sweeper` (env: DISTBATCH_REDIS_URL, ...)."""

from __future__ import annotations

import sys

from distbatch.cli import main

if __name__ == "__main__":
    main(["sweeper", *sys.argv[1:]])
