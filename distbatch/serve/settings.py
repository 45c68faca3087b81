"""What `distbatch serve` runs with, checked before anything listens: no auth, no start."""

from __future__ import annotations

from dataclasses import dataclass

from ..clients import check_url
from ..errors import ConfigError
from ..exposure import check_exposure, read_tokens

__all__ = ["ServeSettings", "read_tokens"]


@dataclass(frozen=True, slots=True)
class ServeSettings:
    redis_url: str
    namespace: str = "distbatch"
    queue_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    tokens: frozenset[str] = frozenset()
    insecure_no_auth: bool = False
    max_body_bytes: int = 8 << 20
    max_events: int = 10_000
    max_event_bytes: int = 1 << 20
    body_timeout_ms: int = 30_000
    """The longest a request's body may take to arrive (408 past it): a client stalled mid-body
    holds no connection, nor a shutdown, for ever."""
    idempotency_keep_ms: int = 86_400_000
    """How long a request's response is kept for retries with its Idempotency-Key: each holds
    ~0.3-0.7 KB of Redis that long (at 1,000 requests/s a day is tens of GB)."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_events", "max_event_bytes", "body_timeout_ms",
                     "idempotency_keep_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError("serve_limit_invalid", f"{name}={value!r} must be an integer >= 1")
        check_exposure("distbatch serve", self.host, self.tokens, self.insecure_no_auth)
        check_url(self.redis_url)
        if self.queue_url:
            check_url(self.queue_url, "queue_url")
        if self.redis_url.partition("://")[0].endswith("+cluster") and not self.queue_url:
            raise ConfigError(
                "cluster_needs_queue_url",
                "RQ cannot run on Redis Cluster (its keys span slots): give the hand-off queue a "
                "standalone Redis with --queue-url / DISTBATCH_QUEUE_URL",
            )
