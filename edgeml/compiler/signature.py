"""A model's input signature, made concrete before any heavy work.

Models declare dynamic dimensions (``batch``, ``height``, an unnamed sequence length). Every pass after
``load`` needs values for them: the quantizers' calibration, the fidelity gate, the benchmark, and the
static-shape targets (NPU, TensorRT), which bake them into the model. Filling them with 1 is what broke
real models (a detector whose feature maps no longer concatenate, an audio model whose padding needs two
samples), so each dynamic dimension is resolved, in this order, from:

1. the calibration/evaluation samples (their shapes: the data the user gave is the truth);
2. ``--input-shape`` (``input_shapes``);
3. the model's own metadata: ONNX ``metadata_props`` ``edgeml.dims`` (a JSON object ``{"symbol": value}``),
   ``imgsz`` (Ultralytics exports: the image input's height and width) and ``batch``; and a dimension
   *named* like a batch (``batch``, ``batch_size``, ``N``) is 1.

Whatever is still unresolved stops the build with one :class:`~edgeml.errors.ConfigError` that lists every
such dimension and an ``--input-shape`` example for each input, checked by running the model once with it
on ONNX Runtime where that is possible (a suggestion the model cannot run is worse than none).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeml.arrays import Array
from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import ConfigError

BATCH_NAMES = frozenset({"batch", "batch_size", "batchsize", "n", "bs", "b", "num_batches"})
# values tried, in order, for an unresolved dim when suggesting a flag: image sides, then other lengths
SPATIAL_GUESSES = (640, 320, 224)
# (height, width) tried together when both sides of an image input are dynamic: square inputs of detectors
# and classifiers, then text lines (OCR recognisers need a fixed height: PP-OCR 48, older CRNNs 32)
IMAGE_SIZES = ((640, 640), (320, 320), (224, 224), (48, 320), (32, 320))
LENGTH_GUESSES = (512, 128, 16, 1)
MAX_TRIES = 16


@dataclass(frozen=True)
class Signature:
    """Every dynamic dim of the inputs with its value (``dims``) and where the value came from (``origin``);
    ``varying`` holds dims whose value differs between samples (allowed only where shapes may stay dynamic)."""

    specs: tuple[TensorSpec, ...]
    dims: dict[str, int] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    varying: dict[str, list[int]] = field(default_factory=dict)

    def shape(self, spec: TensorSpec) -> list[int]:
        """``spec``'s shape with every dim resolved (``KeyError`` for one that is not)."""
        return [d if isinstance(d, int) else self.dims[d] for d in spec.shape]

    def input_shapes(self) -> dict[str, list[int]]:
        """A full static shape per input that has a dynamic dim: what a static-shape target bakes in."""
        return {s.name: self.shape(s) for s in self.specs if any(isinstance(d, str) for d in s.shape)}

    def static_input_shapes(self) -> dict[str, list[int]]:
        """:meth:`input_shapes` for a target that needs one shape per input: samples of different sizes
        cannot all run on it, so that is an error naming the sizes found."""
        if self.varying:
            found = "; ".join(f"'{d}': {', '.join(map(str, v))}" for d, v in sorted(self.varying.items()))
            raise ConfigError(f"the samples have different sizes for dynamic dimension(s) {found}, but the target "
                              "needs static shapes: give samples of one shape (pad or crop them)")
        return self.input_shapes()

    def notes(self) -> list[str]:
        return [f"dimension '{d}' = {v} (from {self.origin[d]})" for d, v in sorted(self.dims.items())]


def dynamic_symbols(specs: Sequence[TensorSpec]) -> list[str]:
    """The inputs' dynamic dims, each once, in the order they appear."""
    seen: dict[str, None] = {}
    for s in specs:
        for d in s.shape:
            if isinstance(d, str):
                seen[d] = None
    return list(seen)


def resolve(specs: Sequence[TensorSpec], *, samples: Sequence[Mapping[str, Array]] = (),
            input_shapes: Mapping[str, Sequence[int]] | None = None,
            metadata: Mapping[str, str] | None = None, model: Path | None = None) -> Signature:
    """Resolve every dynamic dim of ``specs`` or raise one ConfigError naming all that are left.
    ``model`` (an ONNX file) lets the error's example flag be checked by running it once."""
    sig = Signature(tuple(specs))
    _from_samples(sig, samples)
    _from_flags(sig, input_shapes or {})
    _from_metadata(sig, metadata or {})
    missing = [d for d in dynamic_symbols(specs) if d not in sig.dims]
    if missing:
        raise ConfigError(unresolved_message(sig, missing, model))
    return sig


def _set(sig: Signature, symbol: str, value: int, origin: str) -> None:
    if symbol not in sig.dims and value > 0:
        sig.dims[symbol] = int(value)
        sig.origin[symbol] = origin


def _from_samples(sig: Signature, samples: Sequence[Mapping[str, Array]]) -> None:
    seen: dict[str, list[int]] = {}
    for feed in samples:
        for s in sig.specs:
            if s.name in feed:
                for d, got in zip(s.shape, np.shape(feed[s.name]), strict=False):
                    if isinstance(d, str):
                        seen.setdefault(d, []).append(int(got))
    for symbol, values in seen.items():
        _set(sig, symbol, values[0], "the sample data")
        if len(set(values)) > 1:
            sig.varying[symbol] = sorted(set(values))


def _from_flags(sig: Signature, input_shapes: Mapping[str, Sequence[int]]) -> None:
    by_name = {s.name: s for s in sig.specs}
    for name, shape in input_shapes.items():
        spec = by_name.get(name)
        if spec is None or len(shape) != len(spec.shape):
            continue  # the load pass reports a wrong name or rank with the model's inputs
        for d, value in zip(spec.shape, shape, strict=True):
            if not isinstance(d, str):
                continue
            if sig.origin.get(d) == "the sample data" and sig.dims[d] != value:
                raise ConfigError(f"--input-shape {name}={'x'.join(map(str, shape))} sets dimension '{d}' to "
                                  f"{value}, but the sample data has {sig.dims[d]}: drop the flag or reshape the data")
            _set(sig, d, int(value), "--input-shape")


def _from_metadata(sig: Signature, metadata: Mapping[str, str]) -> None:
    try:
        declared = json.loads(metadata.get("edgeml.dims", "{}"))
    except ValueError:
        declared = {}
    for symbol, value in (declared.items() if isinstance(declared, dict) else ()):
        if isinstance(value, int):
            _set(sig, str(symbol), value, "the model's metadata (edgeml.dims)")
    imgsz = _ints(metadata.get("imgsz", ""))
    image = _image_axes(sig.specs)
    if image is not None and imgsz:
        spec, (h_axis, w_axis) = image
        h, w = (imgsz[0], imgsz[-1])
        for axis, value in ((h_axis, h), (w_axis, w)):
            if isinstance(spec.shape[axis], str):
                _set(sig, str(spec.shape[axis]), value, "the model's metadata (imgsz)")
    batch = _ints(metadata.get("batch", ""))
    for symbol in dynamic_symbols(sig.specs):
        if symbol.lower() in BATCH_NAMES:
            _set(sig, symbol, batch[0] if batch else 1, "a batch dimension" if not batch else "the model's metadata")


def _ints(text: str) -> list[int]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int) and v > 0]


def _image_axes(specs: Sequence[TensorSpec]) -> tuple[TensorSpec, tuple[int, int]] | None:
    """The first 4-D input with 1 or 3 channels: (spec, (height axis, width axis))."""
    for s in specs:
        if len(s.shape) != 4:
            continue
        if s.shape[1] in (1, 3):
            return s, (2, 3)
        if s.shape[3] in (1, 3):
            return s, (1, 2)
    return None


def _guesses(sig: Signature, symbol: str) -> tuple[int, ...]:
    image = _image_axes(sig.specs)
    if image is not None and symbol in (image[0].shape[a] for a in image[1]):
        return SPATIAL_GUESSES
    if all(s.shape.index(symbol) == 0 and len(s.shape) > 1 for s in sig.specs if symbol in s.shape):
        return (1,)   # only ever a leading axis: a batch
    return LENGTH_GUESSES


def unresolved_message(sig: Signature, missing: Sequence[str], model: Path | None) -> str:
    """The one error for every unresolved dim, with a checked ``--input-shape`` example."""
    where = [f"'{d}' ({', '.join(f'{s.name}[{s.shape.index(d)}]' for s in sig.specs if d in s.shape)})"
             for d in missing]
    example, verdict = suggest(sig, missing, model)
    flags = " ".join(f"--input-shape {n}={'x'.join(map(str, shape))}" for n, shape in example.items())
    return (f"the model has dynamic dimensions that neither the sample data, --input-shape nor the model's "
            f"metadata fix: {', '.join(where)}. Give calibration data (its shapes fix them), or the shapes, "
            f"e.g. {flags}{verdict}")


def suggest(sig: Signature, missing: Sequence[str], model: Path | None) -> tuple[dict[str, list[int]], str]:
    """Example shapes for the inputs with unresolved dims, and what running them once showed."""
    slots = _slots(sig, missing)
    combos = itertools.islice(itertools.product(*(values for _, values in slots)), MAX_TRIES)
    trials = [Signature(sig.specs, {**sig.dims, **_assign(slots, combo)}) for combo in combos]

    def shapes(trial: Signature) -> dict[str, list[int]]:
        return {s.name: trial.shape(s) for s in sig.specs if any(d in missing for d in s.shape)}

    if model is None:
        return shapes(trials[0]), " (not checked)"
    ok, error = _first_that_runs(model, trials)
    if ok is not None:
        return shapes(ok), " (the model runs with these)" + _control_caveat(sig.specs)
    return shapes(trials[0]), f" (a guess: the model did not run with any tried value: {error})"


Slot = tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]


def _slots(sig: Signature, missing: Sequence[str]) -> list[Slot]:
    """What :func:`suggest` varies: an image's two dynamic sides together (:data:`IMAGE_SIZES`), every
    other missing dim on its own."""
    image = _image_axes(sig.specs)
    sides = tuple(str(image[0].shape[a]) for a in image[1]) if image else ()
    paired = len(set(sides)) == 2 and all(d in missing for d in sides)
    slots: list[Slot] = [(sides, IMAGE_SIZES)] if paired else []
    slots += [((d,), tuple((v,) for v in _guesses(sig, d))) for d in missing if not (paired and d in sides)]
    return slots


def _assign(slots: Sequence[Slot], combo: Sequence[tuple[int, ...]]) -> dict[str, int]:
    return {d: v for (dims, _), values in zip(slots, combo, strict=True) for d, v in zip(dims, values, strict=True)}


def _control_caveat(specs: Sequence[TensorSpec]) -> str:
    """Scalar integer/bool inputs often choose a branch (silero-vad's sample rate picks its 8 or 16 kHz
    path), and the check fed them small random values: the user's real value may need other sizes."""
    control = [s.name for s in specs if not s.shape and not s.dtype.startswith("float")]
    if not control:
        return ""
    return (f"; checked with small random values for the scalar input(s) {', '.join(control)}, which may select "
            "another branch than your real values do: calibration data with real values is the sure way")


def _first_that_runs(model: Path, trials: Sequence[Signature]) -> tuple[Signature | None, str]:
    """The first trial ONNX Runtime runs ``model`` with on random inputs, else the last reason it gave."""
    from edgeml.compiler.data import random_samples

    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        session = ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"])
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # a failing trial is expected: its error goes into the message, not the log
    except Exception as exc:  # not loadable here (another format, a missing kernel): leave it unchecked
        return None, _first_line(exc)
    error = ""
    for trial in trials:
        try:
            session.run(None, random_samples(list(trial.specs), 1, dims=trial.dims)[0], quiet)
            return trial, ""
        except Exception as exc:  # the model does not run with these shapes
            error = _first_line(exc)
    return None, error


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
