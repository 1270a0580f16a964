"""Which passes build which candidate: one table row per (runtime, precision).

Every candidate runs ``load → check → optimize`` first (:func:`prefix_steps`), then its row, then
``evaluate → benchmark`` (and ``package`` for the chosen one). A runtime or precision without a row
is simply not buildable yet; the report says so. Adding a converter is one row here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from edgeml.compiler.request import DEFAULT_CALIBRATION_METHOD
from edgeml.jsontypes import JSON

Step = tuple[str, dict[str, JSON]]

PLANS: dict[tuple[str, str], list[Step]] = {
    ("onnxruntime", "fp32"): [],
    ("onnxruntime", "fp16"): [("fp16", {"keep_io_types": True})],
    ("onnxruntime", "int8"): [("quantize_ort", {"per_channel": False,
                                                "calibration_method": DEFAULT_CALIBRATION_METHOD})],
    ("openvino", "fp32"): [("convert_openvino", {})],
    ("openvino", "fp16"): [("convert_openvino", {"compress_to_fp16": True})],
    ("openvino", "int8"): [("convert_openvino", {}), ("quantize_nncf", {"preset": "performance"})],
    # LiteRT: ONNX -> onnx2tf (isolated toolchain); a .tflite source is kept as is (fp32) or quantized
    # with ai-edge-quantizer (int8) by the same pass (edgeml/compiler/passes/convert_tflite.py)
    ("litert", "fp32"): [("convert_tflite", {"precision": "fp32"})],
    ("litert", "fp16"): [("convert_tflite", {"precision": "fp16"})],
    ("litert", "int8"): [("convert_tflite", {"precision": "int8"})],
}

# Transformer-like graphs (edgeml.compiler.modelinfo.is_transformer_like) replace these rows: their time
# goes into big MatMuls, where dynamic INT8 (ORT) and NNCF's transformer scheme (OpenVINO) pay off, and
# ONNX Runtime has fused attention/LayerNorm/GELU kernels (only for CPU providers: see FUSED_RUNTIMES).
FUSE: Step = ("fuse_transformer", {})
TRANSFORMER_PLANS: dict[tuple[str, str], list[Step]] = {
    ("onnxruntime", "fp32"): [FUSE],
    # dynamic INT8 on the unfused graph: measured 3.3x faster than on the fused one (MiniLM-L3, x86 AVX2),
    # whose Attention/SkipLayerNorm kernels stay float; ONNX Runtime fuses the rest itself at load
    ("onnxruntime", "int8"): [("quantize_dynamic", {"per_channel": True})],  # per tensor: cosine 0.979 on MiniLM
    ("openvino", "int8"): [("convert_openvino", {}),
                           ("quantize_nncf", {"preset": "mixed", "model_type": "transformer"})],
}
# weight-only compression through NNCF (BuildRequest.weight_compression) in place of the OpenVINO INT8 row
WEIGHT_COMPRESSION_PLANS: dict[str, list[Step]] = {
    mode: [("convert_openvino", {}), ("compress_weights", {"mode": mode})] for mode in ("int8", "int4")}

# the option through which each quantizer keeps nodes (by name / by op type) in float
EXCLUDE_NODES_OPTION = {"quantize_ort": "exclude_nodes", "quantize_nncf": "ignored_names",
                        "quantize_dynamic": "exclude_nodes"}
EXCLUDE_TYPES_OPTION = {"quantize_ort": "exclude_op_types", "quantize_nncf": "ignored_types"}
# options the user may set for a quantizer, and which quantizer understands them
QUANT_OPTIONS = {"quantize_ort": ("per_channel", "calibration_method", "max_samples"),
                 "quantize_nncf": ("preset", "subset_size")}


def prefix_steps(input_shapes: Mapping[str, Sequence[int]] | None, runtimes: Iterable[str]) -> list[Step]:
    load_cfg: dict[str, JSON] = {"input_shapes": {k: list(v) for k, v in input_shapes.items()}} if input_shapes else {}
    return [("load", load_cfg), ("check", {"runtimes": sorted(runtimes)}), ("optimize", {})]


def has_plan(runtime: str, precision: str) -> bool:
    return (runtime, precision) in PLANS


def row(runtime: str, precision: str, *, transformer: bool = False, fuse: bool = True,
        weight_compression: str | None = None) -> list[Step]:
    """The plan row for (runtime, precision): the transformer row for transformer-like graphs, the
    weight-compression row when asked. ``fuse`` false (GPU providers: TensorRT/CUDA) keeps ONNX Runtime's
    rows standard: fused and dynamically quantized kernels are CPU kernels; FP16 and QDQ INT8 suit GPUs."""
    if runtime == "openvino" and precision == "int8" and weight_compression:
        return WEIGHT_COMPRESSION_PLANS[weight_compression]
    if transformer and (fuse or runtime != "onnxruntime"):
        return TRANSFORMER_PLANS.get((runtime, precision), PLANS[(runtime, precision)])
    return PLANS[(runtime, precision)]


def candidate_steps(runtime: str, precision: str, *, exclude_nodes: Sequence[str] = (),
                    exclude_op_types: Sequence[str] = (), quant_options: Mapping[str, JSON] | None = None,
                    transformer: bool = False, fuse: bool = True, weight_compression: str | None = None) -> list[Step]:
    """The row for (runtime, precision) (see :func:`row`), with exclusions and quantizer options applied."""
    steps = []
    for name, config in row(runtime, precision, transformer=transformer, fuse=fuse,
                            weight_compression=weight_compression):
        cfg = dict(config)
        if name in EXCLUDE_NODES_OPTION and exclude_nodes:
            cfg[EXCLUDE_NODES_OPTION[name]] = sorted(set(exclude_nodes))
        if name in EXCLUDE_TYPES_OPTION and exclude_op_types:
            cfg[EXCLUDE_TYPES_OPTION[name]] = sorted(set(exclude_op_types))
        for key, value in (quant_options or {}).items():
            if key in QUANT_OPTIONS.get(name, ()):
                cfg[key] = value
        steps.append((name, cfg))
    return steps


def quantizer_index(steps: Sequence[Step]) -> int | None:
    """Position of the step that quantizes (the one a fallback re-runs with exclusions)."""
    for i, (name, _) in enumerate(steps):
        if name in EXCLUDE_NODES_OPTION:
            return i
    return None
