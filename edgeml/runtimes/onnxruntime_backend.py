"""ONNX Runtime backend: providers in the profile's order, threads from config.

TensorRT engines are cached on disk under a key of (model sha256, GPU compute capability, TensorRT
version) when the TensorRT EP is among the providers and a cache directory is given, because building
an engine takes minutes on a Jetson and an engine is only valid for the GPU and TensorRT that built it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import RuntimeBackendError
from edgeml.runtimes.base import Backend, BackendOptions, ProfileOptions, option_strings, option_table
from edgeml.runtimes.host import HostInfo

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"

# ONNX type strings -> numpy dtype names
ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}


class _NodeArg(Protocol):
    """What onnxruntime reports about a model input or output."""

    name: str
    type: str
    shape: Sequence[int | str | None]


def import_ort() -> ModuleType:
    return OnnxRuntimeBackend.import_sdk()


def _spec(arg: _NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or "?") for d in arg.shape)
    return TensorSpec(arg.name, ORT_TYPES.get(arg.type, arg.type), shape)


def provider_arguments(model_path: Path, options: BackendOptions,
                       available: set[str]) -> list[tuple[str, dict[str, object]]]:
    """(provider, options) pairs in the requested order, keeping only providers this ORT has.

    For TensorRT, an engine cache directory keyed by model, GPU and TensorRT version is filled in
    unless the caller set ``trt_engine_cache_path`` explicitly.
    """
    wanted = list(options.providers) or ["CPUExecutionProvider"]
    providers = [p for p in wanted if p in available]
    if not providers:
        raise RuntimeBackendError(
            f"none of the execution providers {wanted} is available in this onnxruntime "
            f"(available: {sorted(available)}); install the onnxruntime build for this hardware "
            "or allow CPU fallback"
        )
    args = []
    for p in providers:
        opts = dict(options.provider_options.get(p, {}))
        if p == TENSORRT_EP and options.cache_dir and "trt_engine_cache_path" not in opts:
            opts["trt_engine_cache_enable"] = True
            opts["trt_engine_cache_path"] = str(engine_cache_dir(model_path, options.cache_dir))
        args.append((p, opts))
    return args


def engine_cache_dir(model_path: Path, cache_root: Path) -> Path:
    from edgeml.fileio import sha256_file
    from edgeml.runtimes.probe import probe_host
    from edgeml.runtimes.trt_cache import tensorrt_cache_dir

    host = probe_host()
    path = tensorrt_cache_dir(cache_root, sha256_file(model_path), host.gpu_compute_capability,
                              host.tensorrt_version)
    path.mkdir(parents=True, exist_ok=True)
    return path


class OnnxRuntimeBackend(Backend):
    runtime = "onnxruntime"
    packages = (("onnxruntime", "onnxruntime"), ("onnxruntime-gpu", "onnxruntime"))
    extra = "onnxruntime"
    default_preferences = ("CPUExecutionProvider",)
    cpu_devices = frozenset({"CPUExecutionProvider", "XnnpackExecutionProvider"})
    device_kind = "execution providers"
    thread_safe = True

    @classmethod
    def preferences(cls, options: ProfileOptions) -> tuple[str, ...]:
        return option_strings(options, "providers")

    @classmethod
    def available_devices(cls) -> tuple[str, ...]:
        return tuple(import_ort().get_available_providers())

    @classmethod
    def device_unusable(cls, device: str, host: HostInfo) -> str | None:
        # onnxruntime-gpu lists the CUDA and TensorRT EPs whether or not the host can drive them.
        if device == TENSORRT_EP and not host.tensorrt_version:
            return "TensorRT is not installed on this host (no libnvinfer)"
        if device in (TENSORRT_EP, CUDA_EP) and not host.cuda:
            return "no NVIDIA GPU/CUDA on this host"
        return None

    @classmethod
    def backend_options(cls, options: ProfileOptions, devices: Sequence[str],
                        base: BackendOptions) -> BackendOptions:
        tables = option_table(options, "provider_options")
        provider_options = {p: option_table(tables, p) for p in tables}
        return replace(base, providers=tuple(devices), provider_options=provider_options)

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        super().__init__(model_path, options)
        ort = import_ort()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if options.num_threads:
            so.intra_op_num_threads = options.num_threads
            so.inter_op_num_threads = 1
        if options.allow_spinning is not None:
            # Spinning threads burn a core waiting for the next op; beside a client or a camera pipeline
            # on the same cores they steal the CPU the work needs (scripts/bench_agent.py --colocated).
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
        provider_args = provider_arguments(self.model_path, options, set(ort.get_available_providers()))
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=so, providers=provider_args)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RuntimeBackendError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        self._inputs = [_spec(a) for a in self.session.get_inputs()]
        self._outputs = [_spec(a) for a in self.session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]
        # Providers the session really uses, in order (ORT drops the ones that failed to initialise).
        self._providers = [str(p) for p in self.session.get_providers()]

    @property
    def device(self) -> str:
        return self._providers[0]

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._output_names
        results = self.session.run(names, feeds if type(feeds) is dict else dict(feeds))
        return dict(zip(names, results, strict=True))

    def close(self) -> None:
        # ORT frees the session with the last reference; drop ours so close() really releases it.
        self.__dict__.pop("session", None)
