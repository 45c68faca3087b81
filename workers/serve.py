"""Deployment entry point: `python -m workers.serve` (env: DISTBATCH_REDIS_URL, ...)."""

from __future__ import annotations

import sys

from distbatch.cli import main

if __name__ == "__main__":
    main(["serve", *sys.argv[1:]])
