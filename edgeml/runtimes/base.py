"""The one small interface every runtime backend implements: what it is, and load, describe, run, close.

Backends live one per module (``onnxruntime_backend``, ``openvino_backend``, ``litert_backend``) and
are imported lazily through :data:`edgeml.runtimes.registry.RUNTIMES`, so a device pays only for the
runtime it uses and a missing runtime gives an "install edgeml[...]" error rather than an ImportError trace.

A backend class is also the one home of its runtime's facts, read by the probe and the selection
without loading a model: the packages that provide it and the extra that installs them, the device
preference order, how to ask the runtime which devices it has here, and how a target profile's options
for it become :class:`BackendOptions`.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import ClassVar, NamedTuple

import numpy as np

from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import InferenceInputError, MissingExtraError, RuntimeBackendError
from edgeml.runtimes.host import HostInfo
from edgeml.runtimes.registry import backends

__all__ = ["Backend", "BackendOptions", "FeedCheck", "backend_class", "describe", "open_model"]


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model: providers/devices in preference order and their options."""

    providers: tuple[str, ...] = ()                  # onnxruntime execution providers, in order
    provider_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    device: str | None = None                        # openvino device ("CPU", "NPU", "AUTO:NPU,CPU", ...)
    properties: Mapping[str, object] = field(default_factory=dict)
    num_threads: int = 0                             # 0 = the runtime's default
    allow_spinning: bool | None = None               # ORT intra-op threads busy-wait for work; None = ORT's default
    cache_dir: Path | None = None                    # engine/model caches (TensorRT, OpenVINO)


# A target profile's [runtime.<name>] table as the bundle's manifest carries it (JSON).
ProfileOptions = Mapping[str, object]


def option_strings(options: ProfileOptions, key: str) -> tuple[str, ...]:
    """A list of names in profile options; () when absent."""
    value = options.get(key)
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def option_table(options: ProfileOptions, key: str) -> dict[str, object]:
    """A table in profile options (provider options, compile properties); {} when absent."""
    value = options.get(key)
    return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}


class FeedCheck(NamedTuple):
    name: str
    dtype: np.dtype
    ndim: int
    fixed: tuple[tuple[int, int], ...]     # (axis, size) for every dimension the model fixes
    spec: TensorSpec


class Backend(abc.ABC):
    """A model loaded in one runtime. ``run`` takes and returns numpy arrays by tensor name.

    The class attributes and class methods describe the runtime itself; the probe and the selection
    use them without loading anything, and only :meth:`available_devices` imports the vendor SDK.
    """

    runtime: ClassVar[str] = ""
    # (distribution, import name) pairs that provide the runtime, in the order they are tried
    packages: ClassVar[tuple[tuple[str, str], ...]] = ()
    extra: ClassVar[str] = ""                                    # pip install 'edgeml[<extra>]'
    default_preferences: ClassVar[tuple[str, ...]] = ("CPU",)   # when neither bundle nor profile says
    cpu_devices: ClassVar[frozenset[str]] = frozenset({"CPU"})  # devices that are "the CPU" (fallback)
    device_kind: ClassVar[str] = "devices"                      # what the runtime calls them, for messages
    # May ``run`` be called from several threads at once? ORT sessions may; an OpenVINO infer request
    # or a LiteRT interpreter may not, so callers serialise runs on those (edgeml.inference does).
    thread_safe: ClassVar[bool] = False

    # -- the runtime's facts (no model needed) -------------------------------------------------------
    @classmethod
    def preferences(cls, options: ProfileOptions) -> tuple[str, ...]:
        """Devices in preference order from a target profile's options for this runtime; () if it says none."""
        return ()

    @classmethod
    def import_sdk(cls) -> ModuleType:
        """The runtime's Python package (the first of ``packages`` that imports); a missing one names the extra."""
        error: ImportError | None = None
        for _, module in cls.packages:
            try:
                return importlib.import_module(module)
            except ImportError as exc:
                error = exc
        raise MissingExtraError(cls.packages[0][0] if cls.packages else cls.runtime, cls.extra,
                                f"running {cls.runtime} models") from error

    @classmethod
    def available_devices(cls) -> tuple[str, ...]:
        """The devices this runtime offers on this host (imports the runtime; the probe caches the answer)."""
        return ("CPU",)

    @classmethod
    def device_unusable(cls, device: str, host: HostInfo) -> str | None:
        """Why ``device`` cannot run here although the runtime may list it (a hardware fact), else None."""
        return None

    @classmethod
    def backend_options(cls, options: ProfileOptions, devices: Sequence[str],
                        base: BackendOptions) -> BackendOptions:
        """How to run: ``base`` (threads, cache) plus the profile's ``options`` for the surviving ``devices``."""
        return base

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        self.model_path = Path(model_path)
        self.options = options

    # What the runtime reports about the loaded model, set by the subclass's __init__.
    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

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


def backend_class(runtime: str) -> type[Backend]:
    """The backend class registered for ``runtime`` (its module imported on first ask)."""
    known = backends()
    if runtime not in known:
        raise RuntimeBackendError(f"unknown runtime '{runtime}'; known: {', '.join(known)}")
    module_name, cls_name = known[runtime].split(":")
    cls: type[Backend] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def open_model(model_path: str | Path, runtime: str, options: BackendOptions | None = None) -> Backend:
    """Load a model file in the named runtime."""
    return backend_class(runtime)(Path(model_path), options or BackendOptions())
