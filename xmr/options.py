"""``KEY=VALUE`` settings as the command line and dataset specs write them, parsed in one place."""
from __future__ import annotations

import json
from typing import Callable, Iterable


def typed_value(text: str):
    """A value as JSON (``5``, ``0.1``, ``true``, ``[1, 2]``), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_values(items: Iterable[str], error: Callable[[str], Exception], typed: bool = True) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values as JSON when ``typed``, else strings);
    an item without ``=`` raises ``error(item)``."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise error(item)
        out[key.strip()] = typed_value(value.strip()) if typed else value.strip()
    return out
