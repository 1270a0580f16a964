"""Read a ``.tflite`` file's operators, custom ops, inputs and outputs without TensorFlow.

The flatbuffer is parsed with the schema module that ships inside ``ai-edge-litert``
(``ai_edge_litert.schema_py_generated``), so this works in the slim build environment with numpy 2.

Custom operators are the reason this module exists: a model that uses one loads only in a runtime whose
op resolver registers it. :data:`CUSTOM_OPS` records what was verified on this project's hosts; for an op
not listed, :func:`probe_litert` asks the installed LiteRT interpreter directly, which is the final word
for the host the build runs on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from edgeml.errors import ConfigError
from edgeml.extras import import_extra

if TYPE_CHECKING:
    from ai_edge_litert.schema_py_generated import OperatorCode, Tensor

TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier at bytes 4..8


@dataclass(frozen=True)
class CustomOpSupport:
    """Which runtime can run a custom op, and the message a user sees at check time."""

    origin: str
    ai_edge_litert: bool
    tflite_runtime: bool
    note: str


# Verified here (see tests/compiler/test_tflite_inspect.py) on the .tflite models in mediapipe 0.10.21:
# ai-edge-litert 2.3.0's default interpreter runs selfie_segmentation, whose Convolution2DTransposeBias
# kernel is compiled into its builtin resolver; tflite-runtime 2.14.0 fails to prepare the same model
# ("Encountered unresolved custom op"). Neither runs face_landmark_with_attention's three custom ops,
# which only MediaPipe's own graph runtime registers.
_MEDIAPIPE_GRAPH_ONLY = (
    "neither ai-edge-litert nor tflite-runtime registers it; only MediaPipe's own runtime (its op "
    "resolver inside the mediapipe package) can run this model"
)
CUSTOM_OPS: dict[str, CustomOpSupport] = {
    "Convolution2DTransposeBias": CustomOpSupport(
        origin="MediaPipe",
        ai_edge_litert=True,
        tflite_runtime=False,
        note="ai-edge-litert (2.x) runs it with its default op resolver; tflite-runtime cannot "
             "(unresolved custom op), so deploy it with ai-edge-litert",
    ),
    "Landmarks2TransformMatrix": CustomOpSupport("MediaPipe", False, False, _MEDIAPIPE_GRAPH_ONLY),
    "TransformLandmarks": CustomOpSupport("MediaPipe", False, False, _MEDIAPIPE_GRAPH_ONLY),
    "TransformTensorBilinear": CustomOpSupport("MediaPipe", False, False, _MEDIAPIPE_GRAPH_ONLY),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str                                  # numpy dtype name
    shape: tuple[int | str, ...]                # "?" for a dynamic dimension
    scale: tuple[float, ...] = ()               # quantization parameters, empty for float tensors
    zero_point: tuple[int, ...] = ()


@dataclass(frozen=True)
class TfliteInfo:
    path: Path
    schema_version: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_counts: dict[str, int]                   # builtin op name (or custom code) -> count, all subgraphs
    custom_ops: list[str]                       # custom codes, sorted, unique
    weight_dtypes: dict[str, int]               # dtype of constant tensors -> count
    subgraphs: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def flex_ops(self) -> list[str]:
        """TensorFlow ("Select TF ops") kernels: need the Flex delegate, which neither LiteRT wheel ships."""
        return [c for c in self.custom_ops if c.startswith("Flex")]

    @property
    def precision(self) -> str:
        """Best guess from the weights: int8 (full or dynamic-range), fp16, or fp32."""
        if self.weight_dtypes.get("int8", 0) or self.weight_dtypes.get("uint8", 0):
            acts_quantized = any(t.dtype in ("int8", "uint8") for t in self.inputs) or "QUANTIZE" in self.op_counts
            return "int8" if acts_quantized else "int8-dynamic"
        if self.weight_dtypes.get("float16", 0):
            return "fp16"
        return "fp32"


_TYPE_NAMES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool", 7: "int16",
    8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64", 14: "uint32", 15: "uint16",
    16: "int4",
}


def _schema() -> ModuleType:
    return import_extra("ai_edge_litert.schema_py_generated", "ai-edge-litert", "litert", "reading .tflite models")


def is_tflite(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(8)
    return len(head) == 8 and head[4:8] == TFLITE_MAGIC


def _builtin_names(schema: ModuleType) -> dict[int, str]:
    ops = schema.BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


def inspect_tflite(path: str | Path) -> TfliteInfo:
    """Parse ``path`` and summarise it. Raises :class:`ConfigError` when it is not a TFLite flatbuffer."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_MAGIC:
        raise ConfigError(f"{path} is not a TFLite model (no 'TFL3' identifier); pass a .tflite file")
    schema = _schema()
    model = schema.Model.GetRootAs(data, 0)
    names = _builtin_names(schema)

    codes: list[str] = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        # Ops numbered above 127 live in BuiltinCode; older files only fill DeprecatedBuiltinCode.
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        if code == schema.BuiltinOperator.CUSTOM:
            codes.append((oc.CustomCode() or b"?").decode())
        else:
            codes.append(names.get(code, f"BUILTIN_{code}"))
    custom = sorted({c for i, c in enumerate(codes) if _is_custom(model.OperatorCodes(i), schema)})

    op_counts: Counter[str] = Counter()
    weight_dtypes: Counter[str] = Counter()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            op_counts[codes[sg.Operators(o).OpcodeIndex()]] += 1
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            buf = model.Buffers(tensor.Buffer()) if tensor.Buffer() < model.BuffersLength() else None
            if buf is not None and (buf.DataLength() > 0 or buf.Size() > 0):
                weight_dtypes[_TYPE_NAMES.get(tensor.Type(), str(tensor.Type()))] += 1

    main = model.Subgraphs(0)
    inputs = [_tensor(main.Tensors(int(i))) for i in main.InputsAsNumpy()]
    outputs = [_tensor(main.Tensors(int(i))) for i in main.OutputsAsNumpy()]
    meta = {}
    for m in range(model.MetadataLength()):
        entry = model.Metadata(m)
        meta[(entry.Name() or b"").decode()] = str(entry.Buffer())
    return TfliteInfo(path, int(model.Version()), inputs, outputs, dict(op_counts), custom,
                      dict(weight_dtypes), int(model.SubgraphsLength()), meta)


def _is_custom(oc: OperatorCode, schema: ModuleType) -> bool:
    return max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode())) == schema.BuiltinOperator.CUSTOM


def _tensor(t: Tensor) -> TensorInfo:
    sig = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
    shape = tuple(int(d) if d >= 0 else "?" for d in (sig if not isinstance(sig, int) else ()))
    q = t.Quantization()
    scale: tuple[float, ...] = ()
    zp: tuple[int, ...] = ()
    if q is not None and q.ScaleLength():
        scale = tuple(float(x) for x in q.ScaleAsNumpy())
        zp = tuple(int(x) for x in q.ZeroPointAsNumpy()) if q.ZeroPointLength() else ()
    return TensorInfo((t.Name() or b"").decode(), _TYPE_NAMES.get(t.Type(), str(t.Type())), shape, scale, zp)


def custom_op_problems(info: TfliteInfo, runtime_package: str = "ai-edge-litert") -> list[str]:
    """One line per custom op that ``runtime_package`` cannot run, or whose support is unknown.

    ``runtime_package`` is "ai-edge-litert" or "tflite-runtime". Known-good ops produce no problem.
    """
    problems = []
    for op in info.custom_ops:
        known = CUSTOM_OPS.get(op)
        if op.startswith("Flex"):
            problems.append(
                f"custom op {op} is a TensorFlow 'Select TF op': it needs the Flex delegate, which neither "
                "ai-edge-litert nor tflite-runtime ships; re-convert the model with TFLite builtins only"
            )
        elif known is None:
            problems.append(
                f"custom op {op} is not one edgeml knows; only a LiteRT build that registers it can run "
                "this model (check it with edgeml.compiler.tflite_inspect.probe_litert)"
            )
        elif not (known.tflite_runtime if runtime_package == "tflite-runtime" else known.ai_edge_litert):
            problems.append(f"custom op {op} is a {known.origin} custom op: {known.note}")
    return problems


def describe_custom_ops(info: TfliteInfo) -> list[str]:
    """Human lines about every custom op, supported or not (for the build report)."""
    lines = []
    for op in info.custom_ops:
        known = CUSTOM_OPS.get(op)
        lines.append(f"{op}: {known.origin} custom op; {known.note}" if known else f"{op}: unknown custom op")
    return lines


def probe_litert(path: str | Path) -> str | None:
    """Load ``path`` in the installed LiteRT interpreter; None when it loads, else the runtime's error."""
    from edgeml.runtimes.litert_backend import import_interpreter

    interpreter_cls = import_interpreter()
    try:
        interpreter = interpreter_cls(model_path=str(path))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None
