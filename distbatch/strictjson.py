"""JSON as readers elsewhere take it. Read from outside (the CLI's and the HTTP service's events):
what Python's json module would take beyond JSON is refused, so every door stores the same
payloads. Written (what the CLI prints, the dashboard's dead batches): never NaN or Infinity."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any


class _NotJSON(ValueError):
    pass


class _Bad:
    """Where a value JSON has no number for stood, in the second parse that finds it."""

    def __init__(self, what: str) -> None:
        self.what = what


def loads(text: str | bytes) -> Any:
    """`json.loads`, refusing NaN, Infinity and numbers past a float's range (Python's json reads
    them as nan and inf, which no JSON reader elsewhere takes), naming where the first one is
    (`[4321].price`: 5,000 events said only "NaN is not JSON"). Not orjson: it turns integers
    past 64 bits into floats, silently. Raises ValueError (or RecursionError, nested too deep)."""
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constants)
    except _NotJSON as exc:
        found = json.loads(text, parse_float=_marked, parse_constant=_Bad)  # the same text parses
        where = _path_of_bad(found)
        raise ValueError(f"{where}: {exc}" if where else str(exc)) from None


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotJSON(f"number {text[:40]} is out of range for a float")
    return value


def _marked(text: str) -> float | _Bad:
    value = float(text)
    return _Bad(text) if math.isinf(value) else value


def _no_constants(name: str) -> Any:
    raise _NotJSON(f"{name} is not JSON")


def _path_of_bad(value: Any) -> str:
    """The first `_Bad`'s path, as `[3].a.b` ('' at the top), in document order."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _Bad):
            return path or "the top"
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node))))
    return ""


def dumps(value: Any, *, default: Callable[[Any], Any] = str, indent: int | None = None) -> str:
    """`json.dumps` that writes no NaN or Infinity, which no JSON reader elsewhere takes (`jq`,
    a browser's `JSON.parse`): a payload emitted through the library may hold them (only the
    CLI's and HTTP's doors refuse them), and `dead show` printed them as they were. Such a float
    is written as the string "NaN", "Infinity" or "-Infinity" (looked for only when there is one)."""
    try:
        return json.dumps(value, default=default, indent=indent, allow_nan=False)
    except ValueError:
        return json.dumps(_finite_only(value), default=default, indent=indent, allow_nan=False)


def _named(number: float) -> str:
    return "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"


def _finite_only(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return _named(value)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, float) and not math.isfinite(k):
                k = _named(k)
                while k in value or k in out:  # a str key of that name beside it: both shown
                    k = f"{k} (a float key)"
            out[k] = _finite_only(v)
        return out
    if isinstance(value, list | tuple):
        return [_finite_only(v) for v in value]
    return value
