"""LiteRT backend: ``ai-edge-litert``, falling back to ``tflite-runtime`` where only that exists."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np

from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import MissingExtraError, RuntimeBackendError
from edgeml.runtimes.base import Backend, BackendOptions


class _Detail(TypedDict):
    """What the interpreter reports about an input or output tensor."""

    name: str
    index: int
    shape: np.ndarray
    shape_signature: NotRequired[np.ndarray]
    dtype: type


def import_interpreter() -> type:
    """The ``Interpreter`` class of whichever LiteRT package is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        pass
    else:
        return Interpreter
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError as exc:
        raise MissingExtraError("ai-edge-litert", "litert", "running .tflite models") from exc
    except AttributeError as exc:  # tflite-runtime 2.14 built against numpy 1: "_ARRAY_API not found"
        raise RuntimeBackendError(
            f"tflite-runtime cannot load with numpy {np.__version__}: it needs numpy<2. "
            "Install ai-edge-litert instead (pip install 'edgeml[litert]'), or pin numpy<2"
        ) from exc
    return Interpreter


class LiteRtBackend(Backend):
    runtime = "litert"
    packages = (("ai-edge-litert", "ai_edge_litert"), ("tflite-runtime", "tflite_runtime"))
    extra = "litert"

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        super().__init__(model_path, options)
        interpreter_cls = import_interpreter()
        try:
            self.interpreter = interpreter_cls(
                model_path=str(model_path), num_threads=options.num_threads or None
            )
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeBackendError(f"LiteRT cannot load {model_path}: {exc}") from exc
        self._in: list[_Detail] = self.interpreter.get_input_details()
        self._out: list[_Detail] = self.interpreter.get_output_details()
        self._inputs = [self._spec(d) for d in self._in]
        self._outputs = [self._spec(d) for d in self._out]

    @staticmethod
    def _spec(detail: _Detail) -> TensorSpec:
        sig = detail.get("shape_signature")
        dims = sig if sig is not None and len(sig) else detail["shape"]
        shape = tuple(int(d) if d >= 0 else "?" for d in dims)
        return TensorSpec(detail["name"], str(np.dtype(detail["dtype"])), shape)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for detail in self._in:
            arr = feeds[detail["name"]]
            if tuple(arr.shape) != tuple(detail["shape"]):
                self.interpreter.resize_tensor_input(detail["index"], arr.shape)
                self.interpreter.allocate_tensors()
                self._in = self.interpreter.get_input_details()
                self._out = self.interpreter.get_output_details()
            self.interpreter.set_tensor(detail["index"], arr)
        self.interpreter.invoke()
        return {d["name"]: self.interpreter.get_tensor(d["index"]).copy() for d in self._out}
