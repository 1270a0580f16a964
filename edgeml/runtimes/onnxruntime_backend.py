"""ONNX Runtime backend: providers in the profile's order, threads from config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import MissingExtraError, RuntimeBackendError
from edgeml.runtimes.base import Backend, BackendOptions

# ONNX type strings -> numpy dtype names
ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("onnxruntime", "onnxruntime", "running ONNX models") from exc
    return onnxruntime


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or "?") for d in arg.shape)
    return TensorSpec(arg.name, ORT_TYPES.get(arg.type, arg.type), shape)


class OnnxRuntimeBackend(Backend):
    runtime = "onnxruntime"

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        super().__init__(model_path, options)
        ort = _import_ort()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if options.num_threads:
            so.intra_op_num_threads = options.num_threads
        available = set(ort.get_available_providers())
        wanted = list(options.providers) or ["CPUExecutionProvider"]
        providers = [p for p in wanted if p in available]
        if not providers:
            raise RuntimeBackendError(
                f"none of the execution providers {wanted} is available in this onnxruntime "
                f"(available: {sorted(available)})"
            )
        provider_args = [(p, dict(options.provider_options.get(p, {}))) for p in providers]
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=so, providers=provider_args)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RuntimeBackendError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        self._inputs = [_spec(a) for a in self.session.get_inputs()]
        self._outputs = [_spec(a) for a in self.session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def device(self) -> str:
        return str(self.session.get_providers()[0])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, results, strict=True))
