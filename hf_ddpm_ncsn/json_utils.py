"""JSON that every reader accepts: no NaN/Infinity literals, no objects `json` cannot write."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def to_json_value(value: Any) -> Any:
    """`value` with non-finite floats as `None`, tuples as lists and anything else `json` cannot write as its
    string, at any depth."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return to_json_value(value.item())
    return str(value)


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` of `to_json_value(value)`, refusing NaN/Infinity literals."""
    return json.dumps(to_json_value(value), allow_nan=False, **kwargs)
