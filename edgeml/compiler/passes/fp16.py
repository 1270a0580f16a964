"""ONNX FP32 → FP16 with ``onnxruntime.transformers.float16``.

Inputs and outputs stay float32 by default (``keep_io_types``) so callers, calibration data and the
fidelity gate feed the FP16 model exactly like the FP32 one. The result is checked with the ONNX
checker and loaded by ONNX Runtime's CPU provider, so a conversion that produces a graph ORT refuses
(a type mismatch around an op with no FP16 kernel) fails here, naming the op to block.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.passes.quantize_ort import validate_config
from edgeml.errors import MissingExtraError, QuantizationError
from edgeml.fileio import sha256_file
from edgeml.jsontypes import JSON

if TYPE_CHECKING:
    from onnx import GraphProto

# Kept in float32 on top of the converter's own block list (ML ops, NMS, RoiAlign, ...): ops that
# compute indices or random values, where half precision changes the result rather than rounding it.
EXTRA_BLOCKED_OPS = ("Range", "RandomUniformLike", "RandomNormalLike")


def topological_sort(graph: GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows its producers (in place).

    The converter appends the float32→float16 Casts of kept IO types at the end of the graph, which
    ONNX's checker rejects; ORT would accept it, other consumers (OpenVINO, TensorRT parser) may not.
    """
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # outer-scope names used only inside subgraphs: keep the remaining order
            ordered.extend(pending)
            break
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


class Fp16(Pass):
    """Convert float tensors and initializers to float16, keeping blocked ops in float32."""

    name = "fp16"
    defaults: Mapping[str, JSON] = {"keep_io_types": True, "block_op_types": [], "block_nodes": []}

    def __init__(self, **config: JSON) -> None:
        super().__init__(**validate_config(self.name, config, self.defaults))

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        if artifact.format != "onnx":
            raise QuantizationError(f"the fp16 pass needs an ONNX model, got {artifact.format} ({artifact.path})")
        if artifact.precision != "fp32":
            raise QuantizationError(f"the fp16 pass converts FP32 models; {artifact.path.name} is {artifact.precision}")
        try:
            import onnx
            import onnxruntime as ort
            from onnxruntime.transformers import float16
        except ImportError as exc:
            raise MissingExtraError("onnxruntime", "compile", "FP16 conversion") from exc

        blocked = sorted({*float16.DEFAULT_OP_BLOCK_LIST, *EXTRA_BLOCKED_OPS, *self.opt_strs("block_op_types")})
        model = onnx.load(str(artifact.path))
        try:
            converted = float16.convert_float_to_float16(
                model, keep_io_types=self.opt_bool("keep_io_types"), op_block_list=blocked,
                node_block_list=self.opt_strs("block_nodes") or None,
            )
        except Exception as exc:
            raise QuantizationError(
                f"FP16 conversion of {artifact.path.name} failed: {type(exc).__name__}: {exc}") from exc

        topological_sort(converted.graph)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        output = ctx.workdir / f"{artifact.path.stem}.fp16.onnx"
        onnx.save(converted, str(output))
        try:
            onnx.checker.check_model(str(output))
            ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        except Exception as exc:
            output.unlink(missing_ok=True)
            raise QuantizationError(
                f"the FP16 version of {artifact.path.name} is not a valid model ({type(exc).__name__}: {exc}); "
                f"keep the offending op types in float32 with the fp16 pass option block_op_types"
            ) from exc

        kept_fp32 = Counter(n.op_type for n in model.graph.node if n.op_type in blocked)
        kept_fp32.update(n.op_type for n in model.graph.node if n.name in set(self.opt_strs("block_nodes")))
        ctx.log(f"fp16: {artifact.path.name} -> {output.name}")
        metadata = {
            **artifact.metadata,
            "converter": "onnxruntime.transformers.float16",
            "keep_io_types": self.opt_bool("keep_io_types"),
            "kept_fp32": dict(sorted(kept_fp32.items())),
            "cast_nodes": sum(1 for n in converted.graph.node if n.op_type == "Cast"),
        }
        return artifact.evolve(
            path=output, format="onnx", precision="fp16", digest=sha256_file(output), extra_files=(),
            metadata=metadata,
        )
