"""What a build is asked to do: :class:`BuildRequest`, the one home of every build default and threshold.

``edgeml.compile(model, target, **options)`` turns its keyword arguments into a ``BuildRequest``; the CLI
(``edgeml build``) builds one from its flags and takes its defaults and choices from this module; the
passes validate their options against the same constants (calibration methods, gate thresholds). A
request is validated when it is made, for everything that needs neither the target profile nor the
model file; :func:`edgeml.compiler.api.compile` checks the rest before any work.

Importing this module is cheap (no numpy, no vendor SDK): the CLI imports it to declare its options.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypedDict

from edgeml.compiler.preprocess import Preprocess
from edgeml.errors import ConfigError, ManifestError
from edgeml.jsontypes import JSON
from edgeml.targets import PRECISIONS, TargetProfile

PRECISION_CHOICES = (*PRECISIONS, "auto")
QUANTIZED = ("int8",)                       # precisions that need calibration data
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
WEIGHT_COMPRESSION_MODES = ("int8", "int4")     # NNCF weight-only compression for OpenVINO

DEFAULT_PRECISION = "auto"
DEFAULT_VERSION = "1.0.0"
DEFAULT_CALIBRATION_METHOD = "minmax"
DEFAULT_BENCH_SECONDS = 2.0

# samples: a .npz/.npy path, an image folder, an array, a dict of arrays, a SampleSet or any iterable of
# arrays or {input name: array} dicts (edgeml.compiler.data.load_samples reads them)
SampleSource = str | Path | Iterable[object]
LabelSource = str | Path | Iterable[object]
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Thresholds:
    """The fidelity gate. ``None`` turns a check off. ``max_drop`` is absolute (0.01 = one accuracy point)."""

    min_agreement: float | None = 0.97
    min_cosine: float | None = 0.98
    min_snr_db: float | None = None
    max_abs_error: float | None = None
    max_drop: float | None = 0.02

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"threshold {name} must be a number or None, got {value!r}")

    def to_json(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> Thresholds:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown threshold(s) {', '.join(unknown)}")
        values: dict[str, float | None] = {}
        for name, value in data.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"threshold {name} must be a number or None, got {value!r}")
            values[name] = None if value is None else float(value)
        return cls(**values)


DEFAULT_GATE = Thresholds()


class BuildOptions(TypedDict, total=False):
    """The keyword arguments of :func:`edgeml.compile` (the fields of :class:`BuildRequest` after
    ``model`` and ``target``), for type checkers; their defaults live on :class:`BuildRequest`."""

    precision: str
    output: str | Path | None
    calibration: SampleSource | None
    evaluation: SampleSource | None
    labels: LabelSource | None
    key: str | Path | None
    name: str | None
    version: str
    input_shapes: Mapping[str, Sequence[int]] | None
    runtime: str | None
    min_agreement: float | None
    min_cosine: float | None
    min_snr_db: float | None
    max_abs_error: float | None
    max_drop: float | None
    fallback: bool
    exclude_nodes: Sequence[str]
    exclude_op_types: Sequence[str]
    per_channel: bool
    calibration_method: str
    weight_compression: str | None
    preprocess: Preprocess | Mapping[str, JSON] | None
    class_names: Sequence[str] | None
    tokenizer: str | Path | None
    state: Sequence[str]
    audio_frames: str | None
    capture_policy: Mapping[str, JSON] | None
    benchmark_seconds: float
    use_cache: bool
    progress: bool | ProgressFn
    log: Callable[[str], None] | None


@dataclass(frozen=True)
class BuildRequest:
    """One build, validated. ``calibration``/``evaluation``: see :data:`SampleSource`; without
    ``evaluation`` a quarter of the calibration samples is held out for the gate. ``labels`` belong to the
    evaluation samples (or to the calibration samples when they are split). Thresholds set to ``None``
    are off. ``progress``: draw bars on stderr (True), nothing (False) or call this function."""

    model: str | Path
    target: str | Path | TargetProfile
    precision: str = DEFAULT_PRECISION
    output: str | Path | None = None
    calibration: SampleSource | None = None
    evaluation: SampleSource | None = None
    labels: LabelSource | None = None
    key: str | Path | None = None
    name: str | None = None
    version: str = DEFAULT_VERSION
    input_shapes: Mapping[str, Sequence[int]] | None = None
    runtime: str | None = None
    min_agreement: float | None = DEFAULT_GATE.min_agreement
    min_cosine: float | None = DEFAULT_GATE.min_cosine
    min_snr_db: float | None = DEFAULT_GATE.min_snr_db
    max_abs_error: float | None = DEFAULT_GATE.max_abs_error
    max_drop: float | None = DEFAULT_GATE.max_drop
    fallback: bool = False
    exclude_nodes: Sequence[str] = ()
    exclude_op_types: Sequence[str] = ()
    per_channel: bool = False
    calibration_method: str = DEFAULT_CALIBRATION_METHOD
    # OpenVINO's INT8 candidate becomes NNCF weight-only compression (int8 or int4 weights, float activations)
    weight_compression: str | None = None
    preprocess: Preprocess | Mapping[str, JSON] | None = None
    class_names: Sequence[str] | None = None
    # what travels beside the model (edgeml.bundle.prepost): a tokenizer.json (or a checkpoint directory
    # holding one), state pairs "input=output" (default: found by name), audio framing "input=frame[/hop]"
    tokenizer: str | Path | None = None
    state: Sequence[str] = ()
    audio_frames: str | None = None
    # the device's default capture policy (edgeml.capture), signed into the manifest as "capture"
    capture_policy: Mapping[str, JSON] | None = None
    benchmark_seconds: float = DEFAULT_BENCH_SECONDS
    use_cache: bool = True
    progress: bool | ProgressFn = True
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_CHOICES:
            raise ConfigError(f"precision '{self.precision}' must be one of {', '.join(PRECISION_CHOICES)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(f"calibration method '{self.calibration_method}' must be "
                              f"{', '.join(CALIBRATION_METHODS[:-1])} or {CALIBRATION_METHODS[-1]}")
        if self.weight_compression not in (None, *WEIGHT_COMPRESSION_MODES):
            raise ConfigError(f"weight compression '{self.weight_compression}' must be one of "
                              f"{', '.join(WEIGHT_COMPRESSION_MODES)}")
        if self.labels is not None and self.calibration is None and self.evaluation is None:
            raise ConfigError("labels were given without samples: pass --eval (or --calibration) data too")
        if self.benchmark_seconds <= 0:
            raise ConfigError(f"benchmark seconds must be > 0, got {self.benchmark_seconds}")
        self.thresholds  # noqa: B018 - validates the threshold values
        if self.capture_policy is not None:
            from edgeml.capture import parse_policy

            parse_policy(self.capture_policy, "the capture policy")   # a bad one fails before any work
        from edgeml.bundle import parse_semver

        try:
            parse_semver(self.version)
        except ManifestError as exc:
            raise ConfigError(str(exc)) from exc
        if self.tokenizer is not None and not Path(self.tokenizer).exists():
            raise ConfigError(f"tokenizer {self.tokenizer} does not exist; pass a tokenizer.json or the model "
                              "directory holding one")
        for pair in self.state:
            if pair.count("=") != 1 or pair.startswith("=") or pair.endswith("="):
                raise ConfigError(f"state pair '{pair}' must be INPUT=OUTPUT, e.g. --state state=stateN")
        if self.audio_frames is not None:
            self.framing  # noqa: B018 - validates the framing
        if isinstance(self.preprocess, Mapping):
            object.__setattr__(self, "preprocess", Preprocess.from_json(self.preprocess))

    def check_data(self) -> None:
        """A quantized precision needs samples (checked after the target allows the precision at all)."""
        if self.precision in QUANTIZED and self.calibration is None and self.evaluation is None:
            raise ConfigError(f"--precision {self.precision} needs calibration data: pass --calibration PATH "
                              "(.npz/.npy or an image folder)")

    @property
    def image_preprocess(self) -> Preprocess | None:
        """``preprocess`` as a :class:`Preprocess` (a mapping was turned into one when the request was made)."""
        return self.preprocess if isinstance(self.preprocess, Preprocess) else None

    @property
    def framing(self) -> dict[str, JSON] | None:
        """``audio_frames`` ("audio=512" or "audio=512/256") as the manifest's preprocess entry."""
        if self.audio_frames is None:
            return None
        name, _, size = self.audio_frames.partition("=")
        frame, _, hop = size.partition("/")
        try:
            frame_n, hop_n = int(frame), int(hop or frame)
        except ValueError:
            frame_n = hop_n = 0
        if not name or frame_n <= 0 or not 0 < hop_n <= frame_n:
            raise ConfigError(f"audio frames '{self.audio_frames}' must be INPUT=FRAME or INPUT=FRAME/HOP with "
                              "0 < HOP <= FRAME, e.g. --audio-frames audio=512")
        return {"kind": "audio_frames", "input": name, "frame": frame_n, "hop": hop_n}

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.min_agreement, self.min_cosine, self.min_snr_db, self.max_abs_error, self.max_drop)

    @property
    def quant_options(self) -> dict[str, JSON]:
        """Options the user may set for a quantizer (each quantizer takes the ones it understands)."""
        return {"per_channel": self.per_channel, "calibration_method": self.calibration_method}

    def bundle_name(self) -> str:
        return self.name or Path(self.model).stem

    def output_path(self, target_id: str) -> Path:
        if self.output:
            return Path(self.output)
        return Path.cwd() / f"{self.bundle_name()}-{self.version}-{target_id}.edgepkg"
