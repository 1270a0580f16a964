"""Optional dependencies: import one where it is used, or say which ``edgeml[extra]`` installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgeml.errors import MissingExtraError


def import_extra(module: str, package: str, extra: str, purpose: str) -> ModuleType:
    """``import module``; when it is missing, a :class:`MissingExtraError` naming ``package``, the extra
    that installs it and what it is ``purpose``-d for."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(package, extra, purpose) from exc
