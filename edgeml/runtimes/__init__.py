"""Runtime backends (one module per runtime, imported lazily through the registry) and their interface.

Importing this package imports nothing: the bundle format and the profile loader read
:mod:`edgeml.runtimes.registry` (a leaf), and the names below load :mod:`edgeml.runtimes.base` on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeml.runtimes.base import Backend, BackendOptions, backend_class, open_model
    from edgeml.runtimes.registry import RUNTIMES

__all__ = ["RUNTIMES", "Backend", "BackendOptions", "backend_class", "open_model"]
_HOME = {"RUNTIMES": "edgeml.runtimes.registry", "Backend": "edgeml.runtimes.base",
         "BackendOptions": "edgeml.runtimes.base", "backend_class": "edgeml.runtimes.base",
         "open_model": "edgeml.runtimes.base"}


def __getattr__(name: str) -> object:
    # base imports the bundle format, which imports the registry: an eager import here would be a cycle.
    if name not in _HOME:
        raise AttributeError(f"module 'edgeml.runtimes' has no attribute '{name}'")
    return getattr(importlib.import_module(_HOME[name]), name)
