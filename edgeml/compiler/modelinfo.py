"""Small helpers shared by the passes: file digests, ONNX input/output specs, saving ONNX models."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import CompileError
from edgeml.extras import import_extra
from edgeml.jsontypes import JSON, as_dict, as_list

if TYPE_CHECKING:
    from onnx import ModelProto, ValueInfoProto

# ONNX TensorProto element types -> numpy dtype names
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
               9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
_TWO_GB = 2**31 - 1


def digest_files(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of every file, in order (a model plus its weight files)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def import_onnx() -> ModuleType:
    return import_extra("onnx", "onnx", "compile", "building bundles")


def load_onnx(path: Path) -> ModelProto:
    onnx = import_onnx()
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise CompileError(f"{path} is not a readable ONNX model: {exc}") from exc


def save_onnx(model: ModelProto, path: Path) -> list[Path]:
    """Save a model; weights go to an external file only when protobuf's 2 GB limit requires it.
    Returns the files written (model first)."""
    onnx = import_onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > _TWO_GB:
        data = path.with_suffix(".onnx.data")
        onnx.save_model(model, str(path), save_as_external_data=True, location=data.name)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def _dims(value_info: ValueInfoProto) -> tuple[int | str, ...]:
    """Static dims as ints, dynamic ones by their symbol. An unnamed dynamic dim gets a name of its own
    (``<tensor>_dim<axis>``): two unnamed dims are not the same dimension, so they must not share one."""
    dims: list[int | str] = []
    for i, d in enumerate(value_info.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param if is_named_dim(d.dim_param) else f"{value_info.name}_dim{i}")
    return tuple(dims)


def is_named_dim(param: str) -> bool:
    """Whether a dim_param names a dimension. Some exporters write "?" (PaddlePaddle) for every unknown
    dim: that is not a name, and two such dims (an image's height and width) are not the same dimension."""
    return bool(param) and param != "?"


def onnx_specs(model: ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (without initializers) and outputs, with named dynamic dimensions."""
    inits = {i.name for i in model.graph.initializer}

    def spec(v: ValueInfoProto) -> TensorSpec:
        elem = v.type.tensor_type.elem_type
        return TensorSpec(v.name, ONNX_DTYPES.get(elem, f"onnx:{elem}"), _dims(v))

    inputs = [spec(v) for v in model.graph.input if v.name not in inits]
    outputs = [spec(v) for v in model.graph.output]
    return inputs, outputs


def specs_to_json(specs: Sequence[TensorSpec]) -> list[JSON]:
    return [s.to_json() for s in specs]


def specs_from_json(data: JSON) -> list[TensorSpec]:
    return [TensorSpec.from_json(as_dict(d)) for d in as_list(data)]


def onnx_opset(model: ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def is_transformer_like(model: ModelProto) -> bool:
    """An attention model: Softmax over MatMul scores and layer normalization, with more MatMuls than
    convolutions (a CNN with one attention block stays a CNN). Its plan rows differ
    (:data:`edgeml.compiler.plan.TRANSFORMER_PLANS`): fusions, dynamic INT8, NNCF's transformer scheme."""
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    norms = ops.get("LayerNormalization", 0) + ops.get("SkipLayerNormalization", 0) + ops.get("ReduceMean", 0)
    attention = ops.get("Softmax", 0) + ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0)
    matmuls = ops.get("MatMul", 0) + ops.get("Gemm", 0)
    return attention >= 1 and norms >= 1 and matmuls >= 4 and matmuls > ops.get("Conv", 0)
