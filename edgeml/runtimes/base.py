"""The one small interface every runtime backend implements: load, describe, run, close.

Backends live one per module (``onnxruntime_backend``, ``openvino_backend``, ``litert_backend``) and
are imported lazily through :data:`BACKENDS`, so a device pays only for the runtime it uses and a
missing runtime gives an "install edgeml[...]" error rather than an ImportError trace.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import InferenceInputError, RuntimeBackendError


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model: providers/devices in preference order and their options."""

    providers: tuple[str, ...] = ()                  # onnxruntime execution providers, in order
    provider_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: str | None = None                        # openvino device ("CPU", "NPU", "AUTO:NPU,CPU", ...)
    properties: Mapping[str, Any] = field(default_factory=dict)
    num_threads: int = 0                             # 0 = the runtime's default
    cache_dir: Path | None = None                    # engine/model caches (TensorRT, OpenVINO)


class FeedCheck(NamedTuple):
    name: str
    dtype: np.dtype
    ndim: int
    fixed: tuple[tuple[int, int], ...]     # (axis, size) for every dimension the model fixes
    spec: TensorSpec


class Backend(abc.ABC):
    """A model loaded in one runtime. ``run`` takes and returns numpy arrays by tensor name."""

    runtime: str = ""
    # May ``run`` be called from several threads at once? ORT sessions may; an OpenVINO infer request
    # or a LiteRT interpreter may not, so callers serialise runs on those (edgeml.inference does).
    thread_safe: bool = False

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        self.model_path = Path(model_path)
        self.options = options

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @property
    def device(self) -> str:
        """The device/provider actually in use (e.g. 'CPUExecutionProvider', 'CPU')."""
        return "CPU"

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the runtime's resources."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def feed_plan(self) -> list[FeedCheck]:
        """Per input, what ``check_feeds`` compares: name, dtype, rank and the fixed dimensions."""
        plan = self.__dict__.get("_feed_plan")
        if plan is None:
            plan = self.__dict__["_feed_plan"] = [
                FeedCheck(s.name, np.dtype(s.dtype), len(s.shape),
                          tuple((i, d) for i, d in enumerate(s.shape) if isinstance(d, int) and d >= 0), s)
                for s in self.inputs
            ]
        return plan

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate names, dtypes and shapes against the model; a clear error instead of a runtime crash.

        Runs on every request, so the checks are precompiled once per backend (``_feed_plan``) and the
        common case (right names, right dtype, contiguous) costs a few microseconds.
        """
        plan = self.feed_plan()
        if len(feeds) != len(plan) or any(name not in feeds for name, *_ in plan):
            self._names_error(feeds)
        out: dict[str, np.ndarray] = {}
        for name, dtype, ndim, fixed, spec in plan:
            arr = feeds[name]
            if type(arr) is not np.ndarray:
                arr = np.asarray(arr)
            if arr.dtype != dtype:
                if arr.dtype.kind in "fiub" and np.can_cast(arr.dtype, dtype, casting="same_kind"):
                    arr = arr.astype(dtype)
                else:
                    raise InferenceInputError(f"input '{name}' has dtype {arr.dtype}; the model wants {spec.dtype}")
            shape = arr.shape
            if len(shape) != ndim or any(shape[i] != d for i, d in fixed):
                raise InferenceInputError(
                    f"input '{name}' has shape {list(shape)}; the model wants {list(spec.shape)}"
                )
            out[name] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
        return out

    def _names_error(self, feeds: Mapping[str, object]) -> None:
        specs = [s.name for s in self.inputs]
        missing = [n for n in specs if n not in feeds]
        unknown = [n for n in feeds if n not in specs]
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(unknown)}")
        raise InferenceInputError(f"{'; '.join(parts)}; the model takes: {describe(self.inputs)}")


def describe(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in specs)


# runtime name -> "module:Class", imported on first use
BACKENDS: dict[str, str] = {
    "onnxruntime": "edgeml.runtimes.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "edgeml.runtimes.openvino_backend:OpenVinoBackend",
    "litert": "edgeml.runtimes.litert_backend:LiteRtBackend",
}


def backend_class(runtime: str) -> type[Backend]:
    try:
        module_name, cls_name = BACKENDS[runtime].split(":")
    except KeyError:
        raise RuntimeBackendError(f"unknown runtime '{runtime}'; known: {', '.join(BACKENDS)}") from None
    cls: type[Backend] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def open_model(model_path: str | Path, runtime: str, options: BackendOptions | None = None) -> Backend:
    """Load a model file in the named runtime."""
    return backend_class(runtime)(Path(model_path), options or BackendOptions())


def numpy_dtype_name(dtype: Any) -> str:
    return str(np.dtype(dtype))
