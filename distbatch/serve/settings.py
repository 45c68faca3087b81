"""What `distbatch serve` runs with, checked before anything listens: no auth, no start."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

MIN_TOKEN_CHARS = 16


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

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_events", "max_event_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError("serve_limit_invalid", f"{name}={value!r} must be an integer >= 1")
        if self.tokens and self.insecure_no_auth:
            raise ConfigError("serve_auth_conflict", "tokens given and --insecure-no-auth: pick one")
        if not self.tokens and not self.insecure_no_auth:
            raise ConfigError(
                "serve_no_auth",
                "no API token configured: set DISTBATCH_API_TOKENS (comma-separated) or --token-file; "
                "--insecure-no-auth runs without auth, on a loopback address only",
            )
        if self.insecure_no_auth and not is_loopback(self.host):
            raise ConfigError(
                "serve_no_auth_public",
                f"host={self.host!r} is not a loopback address: --insecure-no-auth serves only on "
                "127.0.0.1, ::1 or localhost; configure API tokens to listen elsewhere",
            )
        for t in self.tokens:
            if len(t) < MIN_TOKEN_CHARS or any(c.isspace() for c in t):
                raise ConfigError(
                    "serve_token_weak",
                    f"an API token of {len(t)} characters: tokens need {MIN_TOKEN_CHARS}+ characters "
                    "and no spaces (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe())')",
                )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_tokens(env: str | None = None, token_file: str | Path | None = None) -> frozenset[str]:
    """Tokens from `DISTBATCH_API_TOKENS` (comma-separated) and a file (one per line, `#`
    comments); both may be given."""
    raw = os.environ.get("DISTBATCH_API_TOKENS", "") if env is None else env
    tokens = {t.strip() for t in raw.split(",") if t.strip()}
    if token_file is not None:
        try:
            text = Path(token_file).read_text()
        except OSError as exc:
            raise ConfigError("serve_token_file", f"--token-file={str(token_file)!r}: {exc}") from exc
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                tokens.add(line)
    return frozenset(tokens)
