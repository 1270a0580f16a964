"""edgeml: take a trained model from a workstation to a fleet of edge devices and keep it healthy there.

Importing this package is cheap on purpose: the compiler, the runtimes and the fleet server are loaded
only when used, so a device running the agent never pays for the compiler's dependencies.

- :func:`compile` builds a signed bundle from an ONNX or TFLite model, a torch module, a ``.pt2``, a
  Hugging Face checkpoint directory or a Keras model (``edgeml.compiler.api``).
- :func:`load` loads a bundle (file or unpacked directory) for in-process inference (``edgeml.inference``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeml._version import __version__
from edgeml.errors import EdgeMLError

__all__ = ["EdgeMLError", "__version__", "compile", "load"]

if TYPE_CHECKING:
    from edgeml.compiler.api import compile
    from edgeml.inference import load

_LAZY = {"compile": "edgeml.compiler.api", "load": "edgeml.inference"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeml' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)
