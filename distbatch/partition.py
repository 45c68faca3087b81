"""Partition keys: the value at a dot-path of the payload, as a string (SPEC §1)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_MISSING = object()


def _stringify(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):  # an object with int and str keys: not sortable as they are
        pass
    try:
        return json.dumps(_json_keys(value), separators=(",", ":"), ensure_ascii=False, sort_keys=True,
                          default=str)
    except (TypeError, ValueError, RecursionError):
        return str(value)


def _json_keys(value: Any) -> Any:
    """`value` with every object's keys as the text JSON gives them (`1` -> "1", `True` ->
    "true"), so they sort: equal objects are one key whatever their keys' order (Python's repr,
    the fallback before, kept the order they were inserted in)."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else json.dumps(k, default=str).strip('"'): _json_keys(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_keys(v) for v in value]
    return value


def partition_key(payload: Mapping[str, Any], path: tuple[str, ...] | None) -> str | None:
    """`None` (the key-less buffer) when there is no path or it does not resolve."""
    if not path:
        return None
    value: Any = payload
    for part in path:
        if type(value) is not dict and not isinstance(value, Mapping):
            return None
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return None
    return _stringify(value)


def split_path(key: str | None) -> tuple[str, ...] | None:
    return tuple(key.split(".")) if key else None
