"""Argument checks shared by the schedulers and pipelines: fail at construction, naming the argument and what it
accepts. Numbers may be Python or NumPy scalars (users pass `np.int64` and `np.float32` all the time); the checks
return them as Python numbers so that configs stay JSON."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; accepted values: {', '.join(map(repr, choices))}")


def check_positive_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum]."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: Any) -> float:
    """`value` as a finite float > 0."""
    return check_float_in_range(name, value, 0.0, math.inf, include_low=False)


def check_float_in_range(
    name: str, value: Any, low: float, high: float, include_low: bool = True, include_high: bool = True
) -> float:
    """`value` as a finite float in the interval from `low` to `high` (ends included as said)."""
    ok = not isinstance(value, bool | np.bool_) and isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and (low <= value if include_low else low < value) and (value <= high if include_high else value < high)
    if not ok:
        interval = f"{'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """`value` as a bool; strings such as "no" (truthy in Python) are refused."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)
