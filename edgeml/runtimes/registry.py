"""The runtimes edgeml can run models in: one line per runtime.

A plain dict of lazily imported classes (roboflow-style): the key is the runtime name a bundle's
manifest carries, the value is ``"module:Class"`` (a :class:`edgeml.runtimes.base.Backend`), imported by
:func:`edgeml.runtimes.base.backend_class` on first ask. Everything else about a runtime (its packages
and extra, its device preference order, how to ask it which devices it has, how profile options become
backend options) lives on that class, so adding a runtime is one backend module plus one line here.

This module imports nothing, so anything may read it without pulling in a backend.
"""

from __future__ import annotations

BACKENDS: dict[str, str] = {
    "onnxruntime": "edgeml.runtimes.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "edgeml.runtimes.openvino_backend:OpenVinoBackend",
    "litert": "edgeml.runtimes.litert_backend:LiteRtBackend",
}
