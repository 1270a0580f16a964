"""Typed reading of one TOML table; every error names the file and the dotted key.

One reader for every TOML document edgeml validates: the agent's config (raising
:class:`~edgeml.errors.ConfigError`) and target profiles (raising :class:`~edgeml.errors.TargetError`).
The error class is a parameter, so each caller's ``except`` clauses keep catching what they did, and the
wording of every message lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from edgeml.errors import ConfigError

T = TypeVar("T")
D = TypeVar("D")
E = TypeVar("E", bound=ConfigError)


class _Required:
    """The default of a key that must be present (a sentinel type, so mypy tells it from a real default)."""


REQUIRED = _Required()


class TomlSection(Generic[E]):
    def __init__(self, source: str, data: Mapping[str, object], error: type[E], prefix: str = "") -> None:
        self.source, self.data, self.error, self.prefix = source, data, error, prefix

    def fail(self, key: str, why: str) -> E:
        return self.error(f"{self.source}: key '{self.prefix}{key}' {why}")

    def only(self, allowed: set[str]) -> None:
        """Refuse unknown keys: a typo silently ignored is worse than a refused file."""
        extra = sorted(set(self.data) - allowed)
        if extra:
            raise self.fail(extra[0], f"is not a known key (allowed: {', '.join(sorted(allowed))})")

    def get(self, key: str, kind: type[T], default: D | _Required = REQUIRED) -> T | D:
        if key not in self.data:
            if isinstance(default, _Required):
                raise self.fail(key, "is required")
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind is not bool:   # TOML true is an int to Python; not to us
            raise self.fail(key, f"must be {kind.__name__}, not {value!r}")
        if not isinstance(value, kind):
            raise self.fail(key, f"must be {kind.__name__}, not {type(value).__name__} {value!r}")
        return value

    def number(self, key: str, default: float, *, minimum: float, maximum: float | None = None) -> float:
        if key not in self.data:
            return default
        raw = self.data[key]
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise self.fail(key, f"must be int/float, not {type(raw).__name__} {raw!r}")
        self._bounded(key, raw, minimum, maximum)
        return float(raw)

    def integer(self, key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.get(key, int, default)
        self._bounded(key, value, minimum, maximum)
        return value

    def strings(self, key: str, what: str = "a string") -> tuple[str, ...]:
        items: list[object] = self.get(key, list, [])
        out: list[str] = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]", f"must be {what}, not {item!r}")
            out.append(item)
        return tuple(out)

    def choice(self, key: str, allowed: tuple[str, ...], default: D | _Required = REQUIRED) -> str | D:
        """One string out of ``allowed``."""
        value = self.get(key, str, default)
        if isinstance(value, str) and value not in allowed:
            raise self.fail(key, f"has unknown value {value!r} (allowed: {', '.join(allowed)})")
        return value

    def choices(self, key: str, allowed: tuple[str, ...], default: D | _Required = REQUIRED) -> tuple[str, ...] | D:
        """A non-empty list of distinct strings out of ``allowed``; an absent key gives ``default``."""
        if key not in self.data and not isinstance(default, _Required):
            return default
        values: list[object] = self.get(key, list)
        if not values:
            raise self.fail(key, "must not be empty")
        out: list[str] = []
        for v in values:
            if not isinstance(v, str) or v not in allowed:
                raise self.fail(key, f"has unknown value {v!r} (allowed: {', '.join(allowed)})")
            out.append(v)
        if len(set(out)) != len(out):
            raise self.fail(key, "lists a value twice")
        return tuple(out)

    def table(self, key: str) -> TomlSection[E]:
        """The nested table ``key`` (empty when absent); its errors name ``prefix.key.inner``."""
        value: dict[str, object] = self.get(key, dict, {})
        return TomlSection(self.source, value, self.error, f"{self.prefix}{key}.")

    def _bounded(self, key: str, value: float, minimum: float, maximum: float | None) -> None:
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise self.fail(key, f"must be at least {minimum}{upper}, not {value}")
