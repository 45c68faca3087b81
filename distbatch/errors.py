"""One small hierarchy, so callers can catch everything distbatch raises with one clause."""

from __future__ import annotations

from typing import Any


class DistbatchError(Exception):
    """Base of every error distbatch raises on purpose."""


class ConfigError(DistbatchError, ValueError):
    """A trigger or batch configuration is invalid; `code` is stable for programs to match."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PayloadError(DistbatchError, ValueError):
    """An event payload cannot be stored (not a mapping, not encodable, or too large)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class HandlerNotAllowed(DistbatchError):
    """A worker was asked to run a handler it was not allowed to import."""


class BatchNotFound(DistbatchError, KeyError):
    """No batch record under that id (already delivered, purged, or never cut)."""


class EmitError(DistbatchError):
    """Redis failed part-way through `emit_many`. Exactly what was stored is known:

    - `results` / `stored`: the events before index `stored` were stored (their results);
    - `uncertain`: the next `uncertain` events were sent but no answer came back twice (Redis
      unreachable); they may or may not be stored;
    - events after those were not sent.
    Retrying from index `stored + uncertain` never duplicates; retrying the uncertain ones may.
    """

    def __init__(self, results: list[Any], stored: int, uncertain: int, cause: BaseException) -> None:
        super().__init__(
            f"emit failed after {stored} stored event(s); the next {uncertain} may or may not be "
            f"stored (no reply from Redis: {cause!r}); events after those were not sent"
        )
        self.results = results
        self.stored = stored
        self.uncertain = uncertain
