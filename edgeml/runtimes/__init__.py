"""Runtime backends (one module per runtime, imported lazily through the registry) and their interface."""

from edgeml.runtimes.base import Backend, BackendOptions, backend_class, open_model
from edgeml.runtimes.registry import BACKENDS

__all__ = ["BACKENDS", "Backend", "BackendOptions", "backend_class", "open_model"]
