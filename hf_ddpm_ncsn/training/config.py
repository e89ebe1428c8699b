"""`--config FILE`: training arguments from a YAML (or JSON) mapping of argument names to values.

The file supplies defaults: it is turned into command-line flags placed before the real ones, so one parser
validates both and a flag given on the command line wins. Every key is checked first, against the argument
dataclasses, so an unknown key or a value of the wrong type is an error naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from typing import Any

import yaml

# far above any real configuration, small enough that a wrong path (a dataset, a log) is refused before reading
MAX_CONFIG_BYTES = 1 << 20
# values never echoed in an error message
_SECRET_KEYS = ("hub_token",)


def read_config_file(path: str) -> dict[str, Any]:
    """The mapping a `--config` file holds: YAML (`yaml.safe_load`) unless the name ends in `.json`.

    Args:
        path (`str`): the file.

    Raises:
        `ValueError`: the file is missing, larger than `MAX_CONFIG_BYTES`, not valid YAML/JSON, or not a mapping.
    """
    if not os.path.isfile(path):
        raise ValueError(f"--config {path}: no such file (pass a YAML or JSON file)")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise ValueError(f"--config {path}: larger than {MAX_CONFIG_BYTES} bytes, which no configuration needs")
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)  # the file may have grown since the size check
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"--config {path}: larger than {MAX_CONFIG_BYTES} bytes, which no configuration needs")
    try:
        text = data.decode("utf-8")
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise ValueError(f"--config {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {err}") from None
    if values is None:  # an empty YAML file (or one of comments only)
        return {}
    if not isinstance(values, dict):
        kind = type(values).__name__
        raise ValueError(f"--config {path}: expected a mapping of argument names to values, got a {kind}")
    return values


def config_to_argv(path: str, dataclass_types: tuple[type, ...]) -> list[str]:
    """Check the `--config` file `path` against the fields of `dataclass_types` and turn it into flags.

    A key whose value is `null` keeps the argument's default.

    Args:
        path (`str`): the YAML or JSON file.
        dataclass_types (`tuple[type, ...]`): the argument dataclasses of the script.

    Returns:
        `list[str]`: command-line flags (scalars as `--name=value`, so no value is ever read as a flag).

    Raises:
        `ValueError`: the file cannot be read, or a key is unknown, or a value has the wrong type or choice.
    """
    fields = _argument_fields(dataclass_types)
    argv: list[str] = []
    for key, value in read_config_file(path).items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"--config {path}: unknown key {key!r}{hint}; keys are the script's argument names")
        if value is None:
            continue
        field, kind = fields[key]
        problem = _type_problem(value, kind) or _choice_problem(value, field)
        if problem is not None:
            shown = "" if key in _SECRET_KEYS else f", got {value!r}"
            raise ValueError(f"--config {path}: key {key!r} must be {problem}{shown} ({type(value).__name__})")
        argv.extend(_flags(key, value))
    return argv


def _argument_fields(dataclass_types: tuple[type, ...]) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Every argument name, with its field and its type without `None` (the annotations are strings here)."""
    fields = {}
    for cls in dataclass_types:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            fields[field.name] = (field, _without_none(hints[field.name]))
    return fields


def _without_none(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return inner
    return hint


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _type_problem(value: Any, kind: Any) -> str | None:
    """What `value` should have been for an argument of type `kind`, or None when it fits."""
    if kind is bool:
        return None if isinstance(value, bool) else "true or false"
    if kind is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if kind is float:
        # YAML reads 1e-3 (no dot) as a string: accept the text the command line would accept
        return None if _is_number(value) or (isinstance(value, str) and _parses_as_float(value)) else "a number"
    if kind is str:  # some string arguments hold numbers too (--sigma_max 50 or auto)
        return None if isinstance(value, str) or _is_number(value) else "a string"
    if typing.get_origin(kind) is list:
        fits = isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return None if fits else "a non-empty list of integers"
    raise TypeError(f"no --config check for arguments of type {kind}")  # a new argument type needs one here


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True  # the argument's own check refuses NaN and infinities where they make no sense


def _choice_problem(value: Any, field: dataclasses.Field) -> str | None:
    choices = field.metadata.get("choices")
    if choices is None or value in choices:
        return None
    return f"one of {', '.join(map(repr, choices))}"


def _flags(key: str, value: Any) -> list[str]:
    if isinstance(value, list):
        return [f"--{key}", *map(str, value)]
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return [f"--{key}={text}"]
