"""Deployment entry point: `python -m workers.worker [--handlers ...]` (env: DISTBATCH_*)."""

from __future__ import annotations

import sys

from distbatch.cli import main

if __name__ == "__main__":
    main(["worker", *sys.argv[1:]])
