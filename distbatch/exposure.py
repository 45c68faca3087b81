"""Who may reach a network service of distbatch (`serve`, the metrics ports): bearer tokens, or
explicitly none on a loopback address only."""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError

MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(authority: str) -> str:
    """The host of a Host header: `127.0.0.1:8080`, `[::1]:80`, `localhost`."""
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


ONE_ONLY = (b"authorization", b"host", b"origin", b"sec-fetch-site", b"content-type", b"idempotency-key")
"""Headers a request may carry once: given twice, one reader takes the first and another (a
proxy, a dict) the last, so a proxy could check one token or key and distbatch act on another."""


def repeated_header(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The first of `ONE_ONLY` given more than once, or None."""
    seen: set[bytes] = set()
    for name, _ in headers:
        if name in ONE_ONLY:
            if name in seen:
                return name
            seen.add(name)
    return None


def local_only_refusal(headers: dict[bytes, bytes]) -> str | None:
    """Why a request to a service without auth (on loopback) must be refused, or None. Listening
    on loopback keeps other machines out, not a web page in the user's own browser: it can post
    to a loopback port without a preflight (cross-site request forgery), or read one through a
    name it points at 127.0.0.1 (DNS rebinding). So the Host must be a loopback name, and a
    request a browser marks as coming from another site is refused."""
    host = headers.get(b"host", b"").decode("latin-1")
    if host and not is_loopback(_host_of(host.strip())):
        return (f"Host {host[:100]!r} is not a loopback name; this service has no auth and answers "
                "only those")
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    if origin and not is_loopback(urlsplit(origin).hostname or ""):
        return (f"a request from the page at {origin[:100]!r}; this service has no auth and takes "
                "no cross-site ones")
    if headers.get(b"sec-fetch-site", b"").strip().lower() == b"cross-site":
        return "a cross-site request; this service has no auth and takes none"
    return None


_COMMENT = re.compile(r"(?:^|\s)#")
"""Where a token file's comment starts: `#` first on its line, or after a space."""


def read_tokens(env: str | None = None, token_file: str | Path | None = None) -> frozenset[str]:
    """Tokens from `DISTBATCH_API_TOKENS` (comma-separated) and a file (one per line, `#`
    comments); both may be given."""
    raw = os.environ.get("DISTBATCH_API_TOKENS", "") if env is None else env
    tokens = {t.strip() for t in raw.split(",") if t.strip()}
    if token_file is not None:
        try:
            text = Path(token_file).read_text()
        except OSError as exc:
            raise ConfigError("token_file", f"--token-file={str(token_file)!r}: {exc}") from exc
        for number, line in enumerate(text.splitlines(), 1):
            token = _COMMENT.split(line, maxsplit=1)[0].strip()
            if "#" in token:  # cut there, it was a shorter token than the one clients send
                raise ConfigError("token_file", f"--token-file={str(token_file)!r} line {number}: a '#' "
                                  "inside a token (a comment starts a line or follows a space; tokens "
                                  "hold no '#')")
            if token:
                tokens.add(token)
    return frozenset(tokens)


def check_exposure(what: str, host: str, tokens: frozenset[str], insecure_no_auth: bool,
                   flag: str = "--insecure-no-auth") -> None:
    """Refuse a service that would listen without auth (unless told, and then on loopback only),
    or with weak tokens."""
    if tokens and insecure_no_auth:
        raise ConfigError("auth_conflict", f"{what}: API tokens given and {flag}: pick one")
    if not tokens and not insecure_no_auth:
        raise ConfigError(
            "no_auth",
            f"{what}: no API token configured: set DISTBATCH_API_TOKENS (comma-separated) or "
            f"--token-file; {flag} runs without auth, on a loopback address only",
        )
    if insecure_no_auth and not is_loopback(host):
        raise ConfigError(
            "no_auth_public",
            f"{what}: host={host!r} is not a loopback address: {flag} serves only on 127.0.0.1, "
            "::1 or localhost; configure API tokens to listen elsewhere",
        )
    for t in tokens:
        if len(t) < MIN_TOKEN_CHARS or any(c.isspace() for c in t):
            raise ConfigError(
                "token_weak",
                f"{what}: an API token of {len(t)} characters: tokens need {MIN_TOKEN_CHARS}+ "
                "characters and no spaces (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe())')",
            )


def bearer_ok(header: bytes, tokens: Iterable[bytes]) -> bool:
    """`Authorization: Bearer <token>` against every configured token, in constant time (the time
    does not say which one matched)."""
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    token = token.strip()
    found = False
    for t in tokens:
        found |= hmac.compare_digest(t, token)
    return found
