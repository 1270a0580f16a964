"""Types of JSON data (manifests, reports, pass configs): a recursive alias, so code that builds or reads
JSON says so without falling back to ``Any``, and small readers that narrow a JSON value to the type a
caller needs (raising ``TypeError`` when the data has another shape: a bug, not a user error)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

# Mapping/Sequence rather than dict/list: they are covariant, so a list[str] or a dict[str, float] is JSON
JSON: TypeAlias = "Mapping[str, JSON] | Sequence[JSON] | str | int | float | bool | None"
JSONDict: TypeAlias = "dict[str, JSON]"     # an object being built (mutable at the top level)


def _wrong(value: JSON, what: str) -> TypeError:
    return TypeError(f"expected {what} in JSON data, got {type(value).__name__}: {value!r:.80}")


def as_dict(value: JSON) -> Mapping[str, JSON]:
    if not isinstance(value, Mapping):
        raise _wrong(value, "an object")
    return value


def as_list(value: JSON) -> Sequence[JSON]:
    if not isinstance(value, list | tuple):
        raise _wrong(value, "a list")
    return value


def as_str(value: JSON) -> str:
    if not isinstance(value, str):
        raise _wrong(value, "a string")
    return value


def as_float(value: JSON) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(value, "a number")
    return float(value)


def as_int(value: JSON) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(value, "an integer")
    return value


def as_strs(value: JSON) -> list[str]:
    return [as_str(v) for v in as_list(value)]


def to_json(value: object) -> JSON:
    """``value`` as JSON data, checked all the way down (for values typed ``object`` by their producer)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    raise TypeError(f"not JSON data: {type(value).__name__}: {value!r:.80}")
