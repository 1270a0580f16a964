"""Static INT8 quantization (QDQ) with onnxruntime's quantizer: ONNX in, ONNX with Q/DQ pairs out.

ONNX Runtime's ``quant_pre_process`` (symbolic shape inference + graph optimization) helps the quantizer
but fails on many real models ("Incomplete symbolic shape inference"); ``quantize_static`` itself works
on them without it, so a failed pre-processing step is recorded and skipped rather than failing the build.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgeml.arrays import Array
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.passes.ort_entropy import entropy_ranges_file
from edgeml.compiler.request import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD
from edgeml.errors import ConfigError, MissingExtraError, QuantizationError
from edgeml.fileio import sha256_file
from edgeml.jsontypes import JSON, JSONDict, as_int, as_list

if TYPE_CHECKING:
    from onnx import ModelProto

CALIBRATION_HINT = (
    "pass calibration data with --calibration (a .npz with one array per input, a .npy for a "
    "single-input model, a folder of images with declared preprocessing, or a Python iterable of "
    "{input name: array} dicts)"
)


def validate_config(pass_name: str, config: Mapping[str, JSON], defaults: Mapping[str, JSON]) -> dict[str, JSON]:
    """Merge ``config`` over ``defaults``; unknown keys and values of the wrong type are ConfigErrors.

    Shared by the quantize/convert passes so every pass rejects a typo the same way.
    """
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ConfigError(
            f"pass '{pass_name}': unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}"
        )
    merged = {**defaults, **config}
    for key, default in defaults.items():
        value = merged[key]
        if default is None or value is None:
            continue
        expected = type(default)
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if isinstance(default, list):
            ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
            merged[key] = [str(v) for v in as_list(value)] if ok else value
        if not ok:
            raise ConfigError(
                f"pass '{pass_name}': option '{key}' must be {expected.__name__}, got {value!r}"
            )
    return merged


def onnx_input_names(model: ModelProto) -> list[str]:
    """Graph inputs that are real inputs (older exporters also list initializers as inputs)."""
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


class Samples(Protocol):
    """What a quantizer reads calibration samples from: a SampleSet, or any sized iterable of feeds."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[object]: ...


class SampleSetReader:
    """Adapts a SampleSet (``len`` + iteration of feed dicts) to onnxruntime's CalibrationDataReader.

    Feeds are checked against the model inputs so a wrong calibration file fails with the input
    names, not with an onnxruntime stack trace deep inside the calibrator.
    """

    def __init__(self, samples: Samples, input_names: list[str], max_samples: int,
                 ctx: BuildContext) -> None:
        self.samples = samples
        self.input_names = input_names
        self.total = min(len(samples), max_samples)
        self.ctx = ctx
        self.count = 0
        self._iter: Iterator[object] | None = None

    def _feed(self, raw: object) -> dict[str, Array]:
        if not isinstance(raw, Mapping):
            raise QuantizationError(
                f"calibration sample {self.count} is a {type(raw).__name__}, expected a dict of "
                f"{{input name: array}}; {CALIBRATION_HINT}"
            )
        missing = [n for n in self.input_names if n not in raw]
        if missing:
            raise QuantizationError(
                f"calibration sample {self.count} lacks model input(s) {', '.join(missing)} "
                f"(it has: {', '.join(map(str, raw)) or 'nothing'})"
            )
        return {n: np.asarray(raw[n]) for n in self.input_names}

    def get_next(self) -> dict[str, Array] | None:
        if self._iter is None:
            self._iter = iter(itertools.islice(iter(self.samples), self.total))
        raw = next(self._iter, None)
        if raw is None:
            return None
        feed = self._feed(raw)
        self.count += 1
        self.ctx.progress("calibrating", self.count, self.total)
        return feed

    def rewind(self) -> None:
        self._iter = None
        self.count = 0

    def __len__(self) -> int:
        return self.total


def constants_to_initializers(model: ModelProto) -> int:
    """Move top-level ``Constant`` nodes into initializers, in place; returns how many moved.

    Some exporters (paddle2onnx: every PP-OCR model) store all weights as Constant nodes. The quantizer
    only treats initializers as weights: Constant outputs are calibrated like activations, quantized
    per tensor as uint8 and re-quantized at run time, which ruins accuracy, ignores ``per_channel`` and
    makes the model slower.
    """
    keep, moved = [], 0
    for node in model.graph.node:
        attrs = list(node.attribute)
        if (node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(attrs) == 1
                and attrs[0].name == "value"):
            tensor = type(attrs[0].t)()
            tensor.CopyFrom(attrs[0].t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved


PER_CHANNEL_OPSET = 13   # DequantizeLinear's ``axis`` (one scale per channel) exists from opset 13


def _upgrade_for_per_channel(model: ModelProto, name: str) -> bool:
    """Convert an older model to opset 13 in place so per-channel Q/DQ nodes are valid; True if converted."""
    import onnx
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), PER_CHANNEL_OPSET)
    if opset >= PER_CHANNEL_OPSET:
        return False
    try:
        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise QuantizationError(
            f"per-channel quantization needs opset {PER_CHANNEL_OPSET} but {name} is opset {opset} and cannot be "
            f"converted ({type(exc).__name__}: {exc}); quantize it per tensor (per_channel=False) or re-export it "
            f"with opset >= {PER_CHANNEL_OPSET}"
        ) from exc
    model.CopyFrom(converted)
    return True


def _preprocess(source: Path, target: Path, *, skip_optimization: bool) -> str | None:
    """Run quant_pre_process; return None on success or the reason it was skipped."""
    try:
        import sympy  # noqa: F401 - quant_pre_process needs it but onnxruntime no longer installs it
    except ImportError:
        return "sympy is not installed (pip install 'edgeml[compile]')"
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # On failure, symbolic shape inference dumps sym_shape_infer_temp.onnx (+ external data) into the
        # working directory: keep that inside the build's work directory, not the user's.
        with contextlib.chdir(target.parent):
            quant_pre_process(str(source.resolve()), str(target.resolve()), skip_optimization=skip_optimization)
    except Exception as exc:  # symbolic shape inference raises bare AssertionErrors on real models
        return f"{type(exc).__name__}: {str(exc).strip() or 'no message'}"
    return None


class QuantizeOrt(Pass):
    """Static INT8 QDQ quantization through ``onnxruntime.quantization.quantize_static``."""

    name = "quantize_ort"
    defaults: Mapping[str, JSON] = {
        "per_channel": False,
        "calibration_method": DEFAULT_CALIBRATION_METHOD,
        "exclude_nodes": [],
        "exclude_op_types": [],
        "max_samples": 64,
        "reduce_range": False,    # 7-bit weights: avoids u8s8 saturation on x86 CPUs without VNNI
    }

    def __init__(self, **config: JSON) -> None:
        merged = validate_config(self.name, config, self.defaults)
        if merged["calibration_method"] not in CALIBRATION_METHODS:
            raise ConfigError(
                f"pass '{self.name}': calibration_method must be one of {', '.join(CALIBRATION_METHODS)}, "
                f"got {merged['calibration_method']!r}"
            )
        if as_int(merged["max_samples"]) < 1:
            raise ConfigError(f"pass '{self.name}': max_samples must be >= 1, got {merged['max_samples']}")
        super().__init__(**merged)

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        if artifact.format != "onnx":
            raise QuantizationError(f"quantize_ort needs an ONNX model, got {artifact.format} ({artifact.path})")
        if ctx.calibration is None:
            raise QuantizationError(f"static INT8 quantization needs calibration data: {CALIBRATION_HINT}")
        if len(ctx.calibration) == 0:
            raise QuantizationError(f"the calibration data holds no samples: {CALIBRATION_HINT}")
        try:
            import onnx
            import onnxruntime.quantization  # noqa: F401 - checked before any work, used in _quantize
        except ImportError as exc:
            raise MissingExtraError("onnxruntime", "compile", "INT8 quantization") from exc

        model = onnx.load(str(artifact.path), load_external_data=False)
        excluded_types = self._excluded_types(model, artifact)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        prepared = _prepare(model, artifact, ctx, per_channel=self.opt_bool("per_channel"),
                            keep_names=bool(self.opt_strs("exclude_nodes")))
        # TensorRT wants symmetric INT8 for both; CPU kernels are fastest with u8 activations, s8 weights.
        trt = "TensorrtExecutionProvider" in ctx.target.options("onnxruntime").providers
        reader = SampleSetReader(ctx.calibration, onnx_input_names(model), self.opt_int("max_samples"), ctx)
        output = ctx.workdir / f"{artifact.path.stem}.int8.onnx"
        ranges: Path | None = None
        try:
            if self.opt_str("calibration_method") == "entropy":  # onnxruntime's own entropy equals MinMax
                ranges = entropy_ranges_file(prepared.source, reader, ctx.workdir)
                if ranges is None:
                    ctx.log("quantize_ort: this onnxruntime takes no calibration ranges; its entropy equals MinMax")
            self._quantize(prepared.source, output, reader, trt, artifact.path.name, ranges)
        finally:
            prepared.cleanup()
            if ranges is not None:
                ranges.unlink(missing_ok=True)
        excluded = bool(self.opt_strs("exclude_nodes") or excluded_types)
        return artifact.evolve(
            path=output, format="onnx", precision="mixed" if excluded else "int8",
            digest=sha256_file(output), extra_files=(), runtime=artifact.runtime or "onnxruntime",
            metadata={**artifact.metadata, **self._metadata(prepared, reader, trt, excluded_types)},
        )

    def _excluded_types(self, model: ModelProto, artifact: Artifact) -> list[str]:
        """The excluded op types the model has; excluded node names it lacks are a ConfigError (a typo)."""
        node_names = {n.name for n in model.graph.node}
        unknown = [n for n in self.opt_strs("exclude_nodes") if n not in node_names]
        if unknown:
            raise ConfigError(
                f"pass '{self.name}': exclude_nodes names node(s) not in {artifact.path.name}: "
                f"{', '.join(unknown)}"
            )
        return sorted({n.op_type for n in model.graph.node} & set(self.opt_strs("exclude_op_types")))

    def _quantize(self, source: Path, output: Path, reader: SampleSetReader, trt: bool, name: str,
                  ranges: Path | None) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        # None = onnxruntime's own default set; with exclusions, that same set minus the excluded types.
        op_types = None
        if self.opt_strs("exclude_op_types"):
            op_types = sorted({*QDQRegistry, *QLinearOpsRegistry} - set(self.opt_strs("exclude_op_types")))
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[self.opt_str("calibration_method")]
        try:
            quantize_static(
                str(source), str(output), reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=self.opt_bool("per_channel"),
                reduce_range=self.opt_bool("reduce_range"),
                activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=self.opt_strs("exclude_nodes"),
                calibrate_method=method,
                extra_options={"ActivationSymmetric": trt, "WeightSymmetric": True},
                **({"calibration_cache_path": str(ranges)} if ranges else {}),
            )
        except QuantizationError:
            raise
        except Exception as exc:
            raise QuantizationError(
                f"onnxruntime could not quantize {name}: {type(exc).__name__}: {exc}"
            ) from exc

    def _metadata(self, prepared: _Prepared, reader: SampleSetReader, trt: bool,
                  excluded_types: list[str]) -> JSONDict:
        return {
            "quantizer": "onnxruntime",
            "quant_format": "QDQ",
            "activation_type": "int8" if trt else "uint8",
            "weight_type": "int8",
            "per_channel": self.opt_bool("per_channel"),
            "reduce_range": self.opt_bool("reduce_range"),
            "calibration_method": self.opt_str("calibration_method"),
            "calibration_samples": reader.count,
            "preprocess": "applied" if prepared.skip_reason is None else f"skipped: {prepared.skip_reason}",
            "constants_moved_to_initializers": prepared.moved,
            "opset_upgraded_to": PER_CHANNEL_OPSET if prepared.upgraded else None,
            "excluded_nodes": self.opt_strs("exclude_nodes"),
            "excluded_op_types": list(excluded_types),
        }


@dataclass
class _Prepared:
    """The model the quantizer reads, after the repairs it needs, and the temporary files made for it."""

    source: Path
    moved: int
    upgraded: bool
    skip_reason: str | None
    temporary: tuple[Path, ...]

    def cleanup(self) -> None:
        for path in self.temporary:
            path.unlink(missing_ok=True)


def _prepare(model: ModelProto, artifact: Artifact, ctx: BuildContext, *, per_channel: bool,
             keep_names: bool) -> _Prepared:
    """Constants to initializers, opset 13 for per-channel scales, and quant_pre_process when it works."""
    import onnx

    stem, source = artifact.path.stem, artifact.path
    moved = constants_to_initializers(model)
    upgraded = per_channel and _upgrade_for_per_channel(model, artifact.path.name)
    if upgraded:
        ctx.log(f"quantize_ort: {artifact.path.name} upgraded to opset {PER_CHANNEL_OPSET} for per-channel scales")
    weights_file = ctx.workdir / f"{stem}.weights.onnx"
    if moved or upgraded:
        onnx.save(model, str(weights_file))
        source = weights_file
        ctx.log(f"quantize_ort: {moved} Constant nodes of {artifact.path.name} moved to initializers (weights)")
    prepared = ctx.workdir / f"{stem}.preprocessed.onnx"
    # Graph optimization may fuse or rename nodes, which would break exclusions by name.
    skip_reason = _preprocess(source, prepared, skip_optimization=keep_names)
    if skip_reason is None:
        source = prepared
        ctx.log(f"quantize_ort: pre-processed {artifact.path.name} (shape inference + optimization)")
    else:
        ctx.log(f"quantize_ort: skipped quant_pre_process ({skip_reason}); quantizing without it")
    return _Prepared(source, moved, upgraded, skip_reason, (prepared, weights_file))
