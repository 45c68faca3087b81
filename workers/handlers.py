"""Example handlers, used by the demo and docker-compose."""

from __future__ import annotations

import logging

from distbatch import Batch

log = logging.getLogger("distbatch.handlers")


def print_batch(batch: Batch) -> None:
    """Log one line per batch: enough to watch the pipeline work."""
    log.warning("batch %s %s %s events=%d attempt=%d", batch.id, batch.binding,
                batch.reason, len(batch.events), batch.attempt)
