"""One small hierarchy, so callers can catch everything distbatch raises with one clause."""

from __future__ import annotations


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
