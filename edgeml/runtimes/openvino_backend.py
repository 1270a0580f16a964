"""OpenVINO backend: compiles IR (or ONNX) for the configured device, with its telemetry off."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import RuntimeBackendError
from edgeml.runtimes.base import Backend, BackendOptions, ProfileOptions, option_strings, option_table
from edgeml.runtimes.vendor_telemetry import disable_vendor_telemetry


class _Dimension(Protocol):
    is_static: bool

    def get_length(self) -> int: ...


class _ElementType(Protocol):
    def to_dtype(self) -> np.dtype: ...


class _Port(Protocol):
    """What OpenVINO reports about a compiled model's input or output."""

    def get_any_name(self) -> str: ...

    def get_partial_shape(self) -> Iterable[_Dimension]: ...

    def get_element_type(self) -> _ElementType: ...


def import_openvino() -> ModuleType:
    """Import OpenVINO with its telemetry disabled: edge sites are air-gapped and must not phone home."""
    disable_vendor_telemetry()
    return OpenVinoBackend.import_sdk()


def _spec(port: _Port) -> TensorSpec:
    pshape = port.get_partial_shape()
    shape = tuple(d.get_length() if d.is_static else "?" for d in pshape)
    name = port.get_any_name()
    dtype = port.get_element_type().to_dtype().name
    return TensorSpec(name, str(np.dtype(dtype)), shape)


class OpenVinoBackend(Backend):
    runtime = "openvino"
    packages = (("openvino", "openvino"),)
    extra = "openvino"

    @classmethod
    def preferences(cls, options: ProfileOptions) -> tuple[str, ...]:
        fallbacks = option_strings(options, "fallback_devices")
        if not (options.get("device") or fallbacks):
            return ()
        device = str(options.get("device") or "AUTO")
        # AUTO means "the runtime chooses among the fallback list", so the list is the candidates.
        return fallbacks if device == "AUTO" else (device, *[d for d in fallbacks if d != device])

    @classmethod
    def available_devices(cls) -> tuple[str, ...]:
        return tuple(import_openvino().Core().available_devices)

    @classmethod
    def backend_options(cls, options: ProfileOptions, devices: Sequence[str],
                        base: BackendOptions) -> BackendOptions:
        # Several surviving devices: let OpenVINO's AUTO plugin pick among them, in the bundle's order.
        device = devices[0] if len(devices) == 1 else "AUTO:" + ",".join(devices)
        return replace(base, device=device, properties=option_table(options, "properties"))

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        super().__init__(model_path, options)
        ov = import_openvino()
        self.core = ov.Core()
        device = options.device or "CPU"
        config = {str(k): v for k, v in options.properties.items()}
        if device == "CPU":
            if options.num_threads:
                config.setdefault("INFERENCE_NUM_THREADS", options.num_threads)
            # On CPUs with AVX512-BF16 or AMX, OpenVINO runs float layers in bf16 unless told otherwise
            # (errors of ~1e-3 relative). The bundle's fidelity report was measured at the precision the
            # bundle states, so run that: f32 arithmetic for float layers, int8 where the IR quantizes.
            config.setdefault("INFERENCE_PRECISION_HINT", "f32")
        if options.cache_dir:
            config.setdefault("CACHE_DIR", str(options.cache_dir))
        try:
            model = self.core.read_model(str(model_path))
            self.compiled = self.core.compile_model(model, device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long messages
            raise RuntimeBackendError(f"OpenVINO cannot compile {model_path} for {device}: {exc}") from exc
        self._device = device
        self._inputs = [_spec(p) for p in self.compiled.inputs]
        self._outputs = [_spec(p) for p in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()

    @property
    def device(self) -> str:
        try:
            devices = self.compiled.get_property("EXECUTION_DEVICES")
            return ",".join(devices)
        except Exception:  # not every plugin reports it
            return self._device

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(dict(feeds))
        return {spec.name: np.array(results[port])
                for spec, port in zip(self._outputs, self.compiled.outputs, strict=True)}
