"""Types of JSON data (manifests, reports, pass configs): a recursive alias, so code that builds or reads
JSON says so without falling back to ``Any``."""

from __future__ import annotations

from typing import TypeAlias

JSON: TypeAlias = "dict[str, JSON] | list[JSON] | str | int | float | bool | None"
JSONDict: TypeAlias = "dict[str, JSON]"
