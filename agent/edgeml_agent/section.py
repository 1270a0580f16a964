"""Typed reading of one TOML table of the agent's config; every error names the file and the dotted key.

Each component's settings module (``telemetry/settings.py``, ``updates/settings.py``) parses its own
table with these readers; :func:`edgeml_agent.config.parse_config` calls those parsers explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from edgeml.errors import ConfigError

T = TypeVar("T")
D = TypeVar("D")


class Section:
    def __init__(self, source: str, data: Mapping[str, object], prefix: str = "") -> None:
        self.source, self.data, self.prefix = source, data, prefix

    def fail(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: key '{self.prefix}{key}' {why}")

    def only(self, allowed: set[str]) -> None:
        extra = sorted(set(self.data) - allowed)
        if extra:
            raise self.fail(extra[0], f"is not a known key (allowed: {', '.join(sorted(allowed))})")

    def get(self, key: str, kind: type[T], default: D) -> T | D:
        if key not in self.data:
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
        items = self.get(key, list, [])
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]", f"must be {what}, not {item!r}")
        return tuple(items)

    def table(self, key: str) -> Section:
        value = self.get(key, dict, {})
        return Section(self.source, value, f"{self.prefix}{key}.")

    def _bounded(self, key: str, value: float, minimum: float, maximum: float | None) -> None:
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise self.fail(key, f"must be at least {minimum}{upper}, not {value}")
