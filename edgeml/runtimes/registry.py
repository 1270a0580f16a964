"""The runtimes a bundle may name: one line per runtime, the one list every side reads.

The key is the runtime name a bundle's manifest and a target profile carry; the entry says where its
backend class lives (``"module:Class"``, a :class:`edgeml.runtimes.base.Backend`, imported by
:func:`edgeml.runtimes.base.backend_class` on first ask) and which keys a target profile's
``[runtime.<name>]`` table may set. Everything else about a runtime (its packages and extra, its device
preference order, how to ask it which devices it has, how profile options become backend options)
lives on that class, so adding a runtime is one backend module plus one line here (and its extra in
``pyproject.toml``).

This module imports nothing from edgeml, so the bundle format (:mod:`edgeml.bundle.manifest`) and the
profile loader (:mod:`edgeml.targets`) read it without pulling in a backend or making a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    """One runtime name. ``backend`` is ``"module:Class"``; an alias has none and names ``alias_of``."""

    backend: str = ""
    profile_keys: frozenset[str] = frozenset()   # keys of a profile's [runtime.<name>] table (RuntimeOptions)
    alias_of: str = ""   # the runtime whose model format this name stands for (the agent tells users to use it)


def backend(path: str, *profile_keys: str) -> Runtime:
    return Runtime(backend=path, profile_keys=frozenset(profile_keys))


def alias(of: str, *profile_keys: str) -> Runtime:
    return Runtime(profile_keys=frozenset(profile_keys), alias_of=of)


RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": backend("edgeml.runtimes.onnxruntime_backend:OnnxRuntimeBackend",
                           "providers", "provider_options", "num_threads"),
    "openvino": backend("edgeml.runtimes.openvino_backend:OpenVinoBackend",
                        "device", "fallback_devices", "properties", "num_threads"),
    "litert": backend("edgeml.runtimes.litert_backend:LiteRtBackend", "num_threads"),
    # A TensorRT bundle is ONNX for onnxruntime's TensorRT execution provider (the compiler checks it as
    # such). The format and profiles accept the name; the agent has no backend for it and says so.
    "tensorrt": alias("onnxruntime", "provider_options"),
}


def backends() -> dict[str, str]:
    """Runtime name -> ``"module:Class"`` for every runtime with a backend of its own (aliases left out)."""
    return {name: entry.backend for name, entry in RUNTIMES.items() if entry.backend}
