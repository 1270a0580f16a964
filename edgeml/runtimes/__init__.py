"""Runtime backends (one module per runtime, imported lazily) and their common interface."""

from edgeml.runtimes.base import BACKENDS, Backend, BackendOptions, backend_class, open_model

__all__ = ["BACKENDS", "Backend", "BackendOptions", "backend_class", "open_model"]
