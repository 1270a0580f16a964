"""``quantize_tflite``: quantize an existing float ``.tflite`` model with ai-edge-quantizer (no
TensorFlow needed, runs in edgeml's own environment with numpy 2).

Two rewrites come first, because the quantizer skips or refuses what many real models contain:

- FP16 weights (``DEQUANTIZE`` of a float16 constant, as in every MediaPipe model) are folded back to
  float32 constants; otherwise nothing behind those DEQUANTIZE ops would be quantized.
- A model without a signature (MediaPipe models have none) gets ``serving_default`` mapping its
  subgraph-0 inputs/outputs, since the quantizer's calibration is driven per signature.

Modes: ``static`` (int8 weights and activations, calibrated with the build's samples; float I/O),
``dynamic`` (int8 weights, activations quantized at run time), ``weight_only`` (int8 weights,
float compute).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from edgeml.arrays import Array
from edgeml.compiler.modelinfo import digest_files
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.passes.quantize_ort import validate_config
from edgeml.compiler.tflite_inspect import inspect_tflite
from edgeml.errors import ConfigError, MissingExtraError, QuantizationError
from edgeml.jsontypes import JSON

if TYPE_CHECKING:
    from ai_edge_litert.schema_py_generated import ModelT, OperatorT, SubGraphT, TensorMapT

SIGNATURE = "serving_default"
MODES = ("static", "dynamic", "weight_only")


def _flatbuffers() -> tuple[ModuleType, ModuleType]:
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError as exc:
        raise MissingExtraError("ai-edge-litert", "litert", "quantizing .tflite models") from exc
    return schema, flatbuffer_utils


def _name(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _drop_unused_tensors(model: ModelT, sg: SubGraphT) -> None:
    """Remove tensors no operator or graph I/O refers to (the folded fp16 originals), and empty their
    buffers, so the file does not carry both copies of the weights and calibration sees no orphans."""
    used = {int(i) for op in sg.operators for i in [*op.inputs, *op.outputs] if i >= 0}
    used |= {int(i) for i in [*sg.inputs, *sg.outputs]}
    order = sorted(used)
    new_index = {old: new for new, old in enumerate(order)}
    shared = {int(t.buffer) for i, t in enumerate(sg.tensors) if i in used}
    for i, t in enumerate(sg.tensors):
        if i not in used and int(t.buffer) not in shared and int(t.buffer) != 0:
            model.buffers[t.buffer].data = None
    sg.tensors = [sg.tensors[i] for i in order]
    for op in sg.operators:
        op.inputs = [new_index[int(i)] if i >= 0 else -1 for i in op.inputs]
        op.outputs = [new_index[int(i)] for i in op.outputs]
    sg.inputs = [new_index[int(i)] for i in sg.inputs]
    sg.outputs = [new_index[int(i)] for i in sg.outputs]
    for sig in model.signatureDefs or []:
        for tm in [*(sig.inputs or []), *(sig.outputs or [])]:
            tm.tensorIndex = new_index[int(tm.tensorIndex)]


def prepare_for_quantizer(src: Path, dst: Path) -> dict[str, int]:
    """Write ``src`` to ``dst`` with fp16 weights folded to fp32 and a signature added when missing.
    Also fills ``builtinCode`` from ``deprecatedBuiltinCode`` (older files). Returns what was changed:
    {"fp16_constants_folded": n, "signature_added": 0|1, "opcodes_upgraded": n}."""
    schema, fu = _flatbuffers()
    model = fu.read_model(str(src))
    # Files from older converters fill only ``deprecatedBuiltinCode`` and leave ``builtinCode`` 0 (ADD);
    # the quantizer reads ``builtinCode`` and would treat every CONV_2D as an ADD of two activations.
    upgraded = 0
    for code in model.operatorCodes:
        if int(code.deprecatedBuiltinCode) > int(code.builtinCode):
            code.builtinCode = int(code.deprecatedBuiltinCode)
            upgraded += 1
    dequantize = schema.BuiltinOperator.DEQUANTIZE
    folded = 0
    for sg in model.subgraphs:
        keep = []
        for op in sg.operators:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = int(code.builtinCode)
            src_t = sg.tensors[op.inputs[0]] if builtin == dequantize and len(op.inputs) == 1 else None
            data = model.buffers[src_t.buffer].data if src_t is not None else None
            if src_t is not None and src_t.type == schema.TensorType.FLOAT16 and data is not None and len(data):
                values = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=np.float16)
                buffer = schema.BufferT()
                buffer.data = np.frombuffer(values.astype(np.float32).tobytes(), dtype=np.uint8)
                model.buffers.append(buffer)
                sg.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
                folded += 1
                continue
            keep.append(op)
        sg.operators = keep
        if folded:
            _drop_unused_tensors(model, sg)
    added = 0
    if not model.signatureDefs:
        sg = model.subgraphs[0]

        def tensor_map(index: int) -> TensorMapT:
            tm = schema.TensorMapT()
            tm.name = _name(sg.tensors[index].name)
            tm.tensorIndex = int(index)
            return tm

        sig = schema.SignatureDefT()
        sig.signatureKey = SIGNATURE
        sig.subgraphIndex = 0
        sig.inputs = [tensor_map(i) for i in sg.inputs]
        sig.outputs = [tensor_map(i) for i in sg.outputs]
        model.signatureDefs = [sig]
        added = 1
    fu.write_model(model, str(dst))
    return {"fp16_constants_folded": folded, "signature_added": added, "opcodes_upgraded": upgraded}


def _opcode_index(model: ModelT, schema: ModuleType, builtin: int) -> int:
    for i, code in enumerate(model.operatorCodes):
        if int(code.builtinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def float_interface(src: Path, dst: Path) -> int:
    """Give a statically quantized model float32 inputs and outputs, like the float model had.

    ai-edge-quantizer's static recipe quantizes the graph's inputs and outputs too, so callers would
    have to quantize feeds themselves. A QUANTIZE op in front of each integer input and a DEQUANTIZE
    after each integer output restore the float interface (and the original tensor names), so the
    candidate takes the same feeds as the reference. Returns how many tensors were wrapped.
    """
    schema, fu = _flatbuffers()
    model = fu.read_model(str(src))
    sg = model.subgraphs[0]
    integer = (schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT16)
    remap: dict[int, int] = {}

    def float_twin(index: int) -> int:
        old = sg.tensors[index]
        twin = schema.TensorT()
        twin.name = old.name
        twin.shape = old.shape
        twin.shapeSignature = old.shapeSignature
        twin.type = schema.TensorType.FLOAT32
        twin.buffer = 0
        old.name = _name(old.name) + "_quantized"
        sg.tensors.append(twin)
        remap[index] = len(sg.tensors) - 1
        return remap[index]

    def op(builtin: int, inputs: list[int], outputs: list[int]) -> OperatorT:
        o = schema.OperatorT()
        o.opcodeIndex = _opcode_index(model, schema, builtin)
        o.inputs, o.outputs = inputs, outputs
        return o

    front = [op(schema.BuiltinOperator.QUANTIZE, [float_twin(i)], [int(i)])
             for i in sg.inputs if sg.tensors[i].type in integer]
    back = [op(schema.BuiltinOperator.DEQUANTIZE, [int(i)], [float_twin(i)])
            for i in sg.outputs if sg.tensors[i].type in integer]
    if not remap:
        fu.write_model(model, str(dst))
        return 0
    sg.operators = [*front, *sg.operators, *back]
    sg.inputs = [remap.get(int(i), int(i)) for i in sg.inputs]
    sg.outputs = [remap.get(int(i), int(i)) for i in sg.outputs]
    for sig in model.signatureDefs or []:
        for tm in [*(sig.inputs or []), *(sig.outputs or [])]:
            tm.tensorIndex = remap.get(int(tm.tensorIndex), int(tm.tensorIndex))
    fu.write_model(model, str(dst))
    return len(remap)


class QuantizeTflite(Pass):
    """Config: ``mode`` (static | dynamic | weight_only; default static), ``calibration_samples`` (100)."""

    name = "quantize_tflite"
    defaults: Mapping[str, JSON] = {"mode": "static", "calibration_samples": 100}

    def __init__(self, **config: JSON) -> None:
        merged = validate_config(self.name, config, self.defaults)
        if merged["mode"] not in MODES:
            raise ConfigError(f"pass '{self.name}': mode must be one of {', '.join(MODES)}, got {merged['mode']!r}")
        super().__init__(**merged)

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        if artifact.format != "tflite":
            raise QuantizationError(f"quantize_tflite needs a .tflite model, got {artifact.format} ({artifact.path})")
        try:
            from ai_edge_quantizer import quantizer, recipe
        except ImportError as exc:
            raise MissingExtraError("ai-edge-quantizer", "compile", "quantizing .tflite models") from exc
        mode = self.opt_str("mode")
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        prepared = ctx.workdir / f"{artifact.path.stem}_prepared.tflite"
        changes = prepare_for_quantizer(artifact.path, prepared)
        recipes = {"static": recipe.static_wi8_ai8, "dynamic": recipe.dynamic_wi8_afp32,
                   "weight_only": recipe.weight_only_wi8_afp32}
        out = ctx.workdir / f"{artifact.path.stem}_int8_{mode}.tflite"
        chatter = io.StringIO()
        try:
            # The quantizer prints a progress bar and a size report, and its calibration interpreter warns
            # that it keeps every tensor (that is what calibration needs); keep all that out of the build.
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                qt = quantizer.Quantizer(str(prepared))
                qt.load_quantization_recipe(recipes[mode]())
                calibration = None
                if qt.need_calibration:
                    calibration = qt.calibrate({SIGNATURE if changes["signature_added"] else _signature(prepared):
                                                self._calibration(ctx, prepared)})
                result = qt.quantize(calibration)
                raw = ctx.workdir / f"{artifact.path.stem}_int8_{mode}_raw.tflite"
                result.export_model(str(raw), overwrite=True)
            changes["float_io_wrapped"] = float_interface(raw, out)
        except (QuantizationError, ConfigError):
            raise
        except Exception as exc:  # the quantizer raises ValueError/RuntimeError/KeyError on unsupported graphs
            raise QuantizationError(f"ai-edge-quantizer ({mode}) failed on {artifact.path.name}: {exc}") from exc
        info = inspect_tflite(out)
        ctx.log(f"quantize_tflite: {artifact.path.name} -> {out.name} ({mode}, {out.stat().st_size / 1024:.0f} KiB)")
        metadata = {**artifact.metadata, "quantizer": f"ai-edge-quantizer ({mode})", "prepare": changes,
                    "tflite_ops": info.op_counts}
        return artifact.evolve(path=out, format="tflite", precision="int8", digest=digest_files([out]),
                               extra_files=(), runtime="litert", metadata=metadata)

    def _calibration(self, ctx: BuildContext, model: Path) -> list[dict[str, Array]]:
        samples = ctx.calibration
        if samples is None or not len(samples):
            raise QuantizationError("quantize_tflite mode static needs calibration data: pass --calibration, "
                                    "or use mode dynamic / weight_only")
        names = [t.name for t in inspect_tflite(model).inputs]
        feeds: list[dict[str, Array]] = []
        for i, feed in enumerate(samples):
            if i >= self.opt_int("calibration_samples"):
                break
            missing = [n for n in names if n not in feed]
            if missing:
                raise QuantizationError(f"calibration sample {i} lacks input(s) {', '.join(missing)} of the "
                                        f"TFLite model (it has {', '.join(feed)})")
            feeds.append({n: np.asarray(feed[n], dtype=np.float32) for n in names})
        return feeds


def _signature(model: Path) -> str:
    from edgeml.runtimes.litert_backend import import_interpreter

    signatures = list(import_interpreter()(model_path=str(model)).get_signature_list())
    return signatures[0] if signatures else SIGNATURE
