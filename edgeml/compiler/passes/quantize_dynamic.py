"""``quantize_dynamic``: dynamic INT8 quantization of the weights of ``MatMul``/``Gemm`` with ONNX Runtime.

Weights are stored as int8 and activations are quantized on the fly, per run, from their actual range,
so no calibration is needed and nothing about the inputs' distribution can be wrong. This is the
quantization transformer encoders use on CPUs: their time goes into large MatMuls, which ONNX Runtime
then runs as ``MatMulInteger``/``DynamicQuantizeMatMul`` kernels. (On convolutions the same scheme is
several times slower than FP32 here, see FACTS.md: the plan uses it only for transformer-like graphs.)
"""

from __future__ import annotations

from typing import ClassVar

from edgeml.compiler.modelinfo import digest_files
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.passes.quantize_ort import validate_config
from edgeml.errors import QuantizationError
from edgeml.jsontypes import JSON

OP_TYPES = ("MatMul", "Gemm")


class QuantizeDynamic(Pass):
    """Config: ``op_types`` (subset of MatMul, Gemm), ``exclude_nodes`` (names kept in float),
    ``per_channel`` (default false)."""

    name = "quantize_dynamic"
    uses_calibration: ClassVar[bool] = False
    defaults: ClassVar[dict[str, JSON]] = {"op_types": list(OP_TYPES), "exclude_nodes": [], "per_channel": False}

    def __init__(self, **config: JSON) -> None:
        merged = validate_config(self.name, config, self.defaults)
        super().__init__(**merged)
        bad = [t for t in self.opt_strs("op_types") if t not in OP_TYPES]
        if bad:
            raise QuantizationError(f"pass '{self.name}': op_types {bad} are not among {list(OP_TYPES)}")

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        if artifact.format != "onnx":
            raise QuantizationError(f"quantize_dynamic needs an ONNX model, got {artifact.format} ({artifact.path})")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = ctx.workdir / "model.int8.onnx"
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        try:
            quantize_dynamic(str(artifact.path), str(out), op_types_to_quantize=self.opt_strs("op_types"),
                             per_channel=self.opt_bool("per_channel"), weight_type=QuantType.QInt8,
                             nodes_to_exclude=self.opt_strs("exclude_nodes"),
                             # fused com.microsoft ops defeat ONNX shape inference: their outputs are float
                             extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1})
        except Exception as exc:  # onnxruntime's quantizer raises plain exceptions on models it cannot handle
            raise QuantizationError(f"dynamic INT8 quantization of {artifact.path.name} failed: "
                                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        excluded = bool(self.opt_strs("exclude_nodes"))
        return artifact.evolve(
            path=out, extra_files=(), digest=digest_files([out]), precision="mixed" if excluded else "int8",
            runtime="onnxruntime",
            metadata={**artifact.metadata, "quantizer": "onnxruntime quantize_dynamic (weights int8, MatMul/Gemm)",
                      "excluded_nodes": self.opt_strs("exclude_nodes")},
        )
