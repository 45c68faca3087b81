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
    except (TypeError, ValueError):  # e.g. an object with int and str keys: keys not sortable
        return str(value)


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
