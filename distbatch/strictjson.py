"""JSON from outside (the CLI's and the HTTP service's events): what Python's json module would
take beyond JSON is refused, so every door stores the same payloads."""

from __future__ import annotations

import json
import math
from typing import Any


def loads(text: str | bytes) -> Any:
    """`json.loads`, refusing NaN, Infinity and numbers past a float's range (Python's json reads
    them as nan and inf, which no JSON reader elsewhere takes). Not orjson: it turns integers
    past 64 bits into floats, silently. Raises ValueError (or RecursionError, nested too deep)."""
    return json.loads(text, parse_float=_finite, parse_constant=_no_constants)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range for a float")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
