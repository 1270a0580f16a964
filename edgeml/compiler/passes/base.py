"""The compiler's pass interface and registry.

A pass takes a model :class:`Artifact` and returns a new one. It is one module under
``edgeml/compiler/passes/`` that subclasses :class:`Pass` with a ``name`` and a ``run``; subclassing
registers it. Vendor SDKs are imported inside ``run`` so importing the registry stays cheap.

A pass's output is cached under :meth:`Pass.cache_key` = hash(pass name, its config, input artifact
hash, target id), so a rebuild with one changed option reruns only what changed.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from edgeml.arrays import Array
from edgeml.errors import ConfigError
from edgeml.jsontypes import JSON, JSONDict, as_dict, as_float, as_int, as_list, as_str, as_strs
from edgeml.targets import TargetProfile

if TYPE_CHECKING:
    from edgeml.compiler.data import SampleSet

FORMATS = ("onnx", "openvino", "tflite")


@dataclass(frozen=True)
class Artifact:
    """One model on disk plus what the passes learned about it.

    ``path`` is the main file (``.onnx``, OpenVINO ``.xml`` or ``.tflite``); ``extra_files`` are files
    that must travel with it (OpenVINO ``.bin``, ONNX external data). ``digest`` is the sha256 of the
    model's bytes (all files), used for cache keys and provenance.
    """

    path: Path
    format: str
    precision: str
    digest: str
    extra_files: tuple[Path, ...] = ()
    runtime: str | None = None                   # the runtime this artifact is meant for, once converted
    metadata: JSONDict = field(default_factory=dict)

    def evolve(self, *, path: Path | None = None, format: str | None = None, precision: str | None = None,
               digest: str | None = None, extra_files: tuple[Path, ...] | None = None, runtime: str | None = None,
               metadata: JSONDict | None = None) -> Artifact:
        """A copy with the given fields changed (``None``: unchanged)."""
        return replace(
            self, path=path or self.path, format=format or self.format, precision=precision or self.precision,
            digest=digest or self.digest, extra_files=self.extra_files if extra_files is None else extra_files,
            runtime=runtime or self.runtime, metadata=self.metadata if metadata is None else metadata,
        )

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path, *self.extra_files)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


@dataclass(frozen=True)
class SourceModel:
    """The model the user gave: its file name and sha256 (provenance in the bundle). For a model a
    front-end brought in (edgeml/compiler/frontends: torch, Hugging Face, Keras), ``origin`` says how it
    was exported (framework, versions, options, export check) and ``assets`` holds the files its
    pre/post-processing needs on the device, by file name (``tokenizer.json``, ``vocab.txt``, ...)."""

    name: str
    sha256: str
    origin: JSONDict | None = None
    assets: Mapping[str, Path] = field(default_factory=dict)
    example: Path | None = None                  # the export's example inputs (.npz, ``in/NAME``)


@dataclass(frozen=True)
class BaselineModel:
    """What the benchmark pass times each candidate against, in the same process (the source model,
    FP32, under plain onnxruntime)."""

    path: Path
    runtime: str


def _no_progress(label: str, done: int, total: int) -> None:
    return None


def _no_log(message: str) -> None:
    return None


@dataclass
class BuildContext:
    """Everything a pass may need besides its own config: the target, the work directory, the
    calibration/evaluation data, what the build learned before this pass and the progress/log callbacks.
    Passes write new files only under ``workdir``.
    """

    target: TargetProfile
    workdir: Path
    reference: Artifact | None = None            # the loaded FP32 source model
    optimized: Artifact | None = None            # after load -> check -> optimize: every candidate's start
    calibration: SampleSet | None = None
    evaluation: SampleSet | None = None          # held-out samples (and labels) for the fidelity gate
    reference_outputs: dict[str, Array] | None = None   # the reference on ``evaluation``, run once
    source: SourceModel | None = None
    baseline: BaselineModel | None = None
    preprocess: JSONDict | None = None           # the declared image preprocessing, shipped in the bundle
    class_names: tuple[str, ...] = ()
    tokenizer: Path | None = None                # a tokenizer.json (or a directory holding one) to ship
    state: tuple[str, ...] = ()                  # state pairs "input=output" (empty: found by name)
    framing: JSONDict | None = None              # audio framing, shipped as the manifest's preprocess
    capture_policy: JSONDict | None = None       # the default capture policy, shipped in the manifest
    progress: Callable[[str, int, int], None] = _no_progress
    log: Callable[[str], None] = _no_log


class Pass(abc.ABC):
    """Base class of every pass. Subclasses set ``name`` and implement ``run``."""

    name: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Pass]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            Pass.registry[cls.name] = cls

    def __init__(self, **config: JSON) -> None:
        self.config: dict[str, JSON] = config

    def check_options(self, known: Iterable[str]) -> None:
        """Refuse a config key this pass does not read: a misspelt option must not be ignored silently."""
        names = list(known)
        unknown = sorted(set(self.config) - set(names))
        if unknown:
            raise ConfigError(f"pass '{self.name}' has no option '{unknown[0]}' (known: {', '.join(names)})")

    # typed reads of the config (validated when the pass was made; a wrong type here is a bug)
    def opt_str(self, key: str) -> str:
        return as_str(self.config[key])

    def opt_bool(self, key: str) -> bool:
        value = self.config[key]
        if not isinstance(value, bool):
            raise TypeError(f"pass '{self.name}': option {key} must be true or false, got {value!r}")
        return value

    def opt_int(self, key: str) -> int:
        return as_int(self.config[key])

    def opt_float(self, key: str) -> float:
        return as_float(self.config[key])

    def opt_strs(self, key: str) -> list[str]:
        return as_strs(self.config[key])

    def opt_shapes(self, key: str) -> dict[str, list[int]] | None:
        """An ``{input name: [dims]}`` option, or None when unset."""
        value = self.config.get(key)
        if value is None:
            return None
        return {name: [as_int(d) for d in as_list(dims)] for name, dims in as_dict(value).items()}

    @abc.abstractmethod
    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        """Produce the next artifact; raise a :class:`edgeml.errors.CompileError` subclass on failure."""

    def cache_key(self, artifact: Artifact, ctx: BuildContext) -> str:
        blob = json.dumps(
            {"pass": self.name, "config": self.config, "input": artifact.digest, "target": ctx.target.id},
            sort_keys=True, default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def get_pass(name: str) -> type[Pass]:
    from edgeml.compiler import passes as _passes  # noqa: F401 - importing the package registers built-ins

    try:
        return Pass.registry[name]
    except KeyError:
        from edgeml.errors import CompileError

        raise CompileError(f"unknown pass '{name}'; known: {', '.join(sorted(Pass.registry))}") from None
