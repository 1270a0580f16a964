"""``check``: every reason the model cannot run on the target, reported together before any work.

Problems found: the ONNX checker, shape inference, an opset above the target's maximum, operators the
target's runtimes have no kernel for (ONNX Runtime: its kernel registry; OpenVINO: ``query_model`` on
the plugin of this host), and dynamic input shapes where the target needs static ones (fixable with
``--input-shape``). One :class:`ModelCheckError` carries them all: fixing one problem at a time and
re-running is what users hate most.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from edgeml.compiler.modelinfo import import_onnx, is_transformer_like, load_onnx, onnx_opset
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.tflite_io import tflite_source_problems
from edgeml.errors import ModelCheckError
from edgeml.targets import TargetProfile

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto, NodeProto


def _checker_problems(model: ModelProto) -> list[str]:
    onnx = import_onnx()
    problems = []
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and friends
        problems.append(f"ONNX checker: {str(exc).strip().splitlines()[0]}")
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # InferenceError
        problems.append(f"shape inference: {str(exc).strip().splitlines()[0]}")
    return problems


def _opset_problems(model: ModelProto, target: TargetProfile) -> list[str]:
    opset = onnx_opset(model)
    if opset > target.max_opset:
        return [f"opset {opset} is above target {target.id}'s maximum {target.max_opset}: re-export the model "
                f"with opset <= {target.max_opset}"]
    return []


def _static_shape_problems(model: ModelProto, target: TargetProfile) -> list[str]:
    if not target.static_shapes:
        return []
    inits = {i.name for i in model.graph.initializer}
    problems = []
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        shown = [str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                 for d in dims]
        if any(not s.isdigit() for s in shown):
            example = "x".join(s if s.isdigit() else "1" for s in shown)
            problems.append(f"input '{v.name}' has dynamic shape [{', '.join(shown)}] but target {target.id} needs "
                            f"static shapes: fix it with --input-shape {v.name}={example}")
    return problems


@cache
def _ort_kernels() -> dict[tuple[str, str], list[tuple[int, int]]]:
    from onnxruntime.capi import _pybind_state as ort_state

    kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in ort_state.get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            domain = "" if k.domain in ("", "ai.onnx") else k.domain
            kernels.setdefault((domain, k.op_name), []).append(tuple(k.version_range))
    return kernels


def _ort_problems(model: ModelProto) -> list[str]:
    """Operators ONNX Runtime's CPU kernels cannot run (every target's provider list ends in CPU here;
    TensorRT/CUDA take subsets of these operators and fall back to CPU for the rest)."""
    kernels = _ort_kernels()
    opsets = {("" if i.domain == "ai.onnx" else i.domain): int(i.version) for i in model.opset_import}
    local_functions = {(f.domain, f.name) for f in model.functions}
    missing: dict[str, None] = {}
    for node in _all_nodes(model.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (domain, node.op_type) in local_functions:
            continue
        ranges = kernels.get((domain, node.op_type))
        version = opsets.get(domain, 1)
        if not ranges and _runs_without_kernel(node.op_type, domain, version):
            continue
        if not ranges:
            missing[f"{domain + '.' if domain else ''}{node.op_type}"] = None
        elif not any(lo <= version for lo, _ in ranges):
            # the newest kernel's range is open-ended, so only an opset older than every kernel misses
            missing[f"{node.op_type} (opset {version})"] = None
    if missing:
        return [f"onnxruntime has no kernel for: {', '.join(missing)}"]
    return []


def _ort_static_load_problems(model: ModelProto, path: Path, target: TargetProfile) -> list[str]:
    """Whether ONNX Runtime still loads the model once its inputs are static. Fixing the input shapes
    lets shape inference reach every branch of an ``If``, and a branch made for other sizes then no longer
    type-checks (silero-vad's 8 kHz branch under 16 kHz frames): without this, every candidate fails later
    with ONNX Runtime's own error, which does not say that the static shapes are the cause."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # default optimizations, as the runtimes load it: folding reaches the branches
    try:
        ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail / InvalidGraph: the reason goes into the problem
        shapes = ", ".join(f"{v.name} {'x'.join(str(d.dim_value) for d in v.type.tensor_type.shape.dim) or 'scalar'}"
                           for v in model.graph.input)
        first = str(exc).strip().splitlines()[0][:240]
        return [f"onnxruntime cannot load the model with the static input shapes target {target.id} needs "
                f"({shapes}): {first}. The graph does not fit one fixed shape (a branch for other sizes?): "
                "build for a target with dynamic shapes, or re-export the model for this one input size"]
    return []


def _runs_without_kernel(op_type: str, domain: str, version: int) -> bool:
    """Operators ONNX Runtime handles without a kernel: ``Constant`` (folded into an initializer at
    load) and operators the ONNX standard defines as a function, which ORT expands into their body."""
    if op_type == "Constant" and domain == "":
        return True
    try:
        schema = import_onnx().defs.get_schema(op_type, version, domain)
    except Exception:  # no schema at all: an unknown (custom) operator
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _all_nodes(graph: GraphProto) -> Iterable[NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g and attr.g.node:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def _openvino_problems(path: Path, target: TargetProfile) -> tuple[list[str], list[str]]:
    from edgeml.runtimes.openvino_backend import import_openvino

    ov = import_openvino()
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # OpenVINO lists the operations its ONNX frontend cannot convert
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return [f"OpenVINO cannot read the model: {' '.join(lines[:6])}"], []
    wanted = target.options("openvino").device or "CPU"
    device = wanted if wanted in core.available_devices else "CPU"
    notes = [] if device == wanted else [f"OpenVINO operator support checked on {device}: {wanted} is not on this host"]
    supported = set(core.query_model(model, device))
    unsupported: dict[str, None] = {}
    for op in model.get_ops():
        if op.get_type_name() in ("Parameter", "Result", "Constant"):
            continue
        if op.get_friendly_name() not in supported:
            unsupported[op.get_type_name()] = None
    if unsupported:
        return [f"OpenVINO {device} cannot run: {', '.join(unsupported)}"], notes
    return [], notes


class CheckPass(Pass):
    """Config: ``runtimes`` (the target's runtimes to check for; default: all of them)."""

    name = "check"
    uses_calibration: ClassVar[bool] = False

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        self.check_options(("runtimes",))
        target = ctx.target
        runtimes = self.opt_strs("runtimes") if self.config.get("runtimes") else list(target.runtimes)
        if artifact.format == "tflite":  # custom ops and the runtime that can run them: tflite_io
            tfl_problems, tfl_notes = tflite_source_problems(artifact.path, target.runtimes, target.id)
            if tfl_problems:
                raise ModelCheckError(tfl_problems)
            return artifact.evolve(metadata={**artifact.metadata, "check_notes": tfl_notes})
        model = load_onnx(artifact.path)
        problems = _checker_problems(model) + _opset_problems(model, target) + _static_shape_problems(model, target)
        by_runtime, notes = _runtime_problems(model, artifact.path, target, runtimes)
        # only a runtime checked here vouches for the model (LiteRT's converter finds out later, per candidate)
        usable = [rt for rt in by_runtime if not by_runtime[rt]]
        if problems or (by_runtime and not usable):
            raise ModelCheckError(problems + [p for rt in runtimes for p in by_runtime.get(rt, [])])
        # a runtime that cannot read or run the model drops out; the others still build (the report says why)
        dropped = {rt: ps for rt, ps in by_runtime.items() if ps}
        notes += [f"{rt} dropped out: {'; '.join(ps)}" for rt, ps in dropped.items()]
        for note in notes:
            ctx.log(note)
        return artifact.evolve(metadata={**artifact.metadata, "check_notes": notes,
                                         "runtime_problems": {rt: list(ps) for rt, ps in dropped.items()},
                                         "graph_kind": "transformer" if is_transformer_like(model) else "other"})


def _runtime_problems(model: ModelProto, path: Path, target: TargetProfile,
                      runtimes: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Per runtime of ``runtimes``: why it cannot read or run the model (empty: it can), and notes."""
    by_runtime: dict[str, list[str]] = {}
    notes: list[str] = []
    ort = _ort_problems(model) if {"onnxruntime", "tensorrt"} & set(runtimes) else []
    if not ort and target.static_shapes and {"onnxruntime", "tensorrt"} & set(runtimes):
        ort = _ort_static_load_problems(model, path, target)
    for rt in ("onnxruntime", "tensorrt"):
        if rt in runtimes:
            by_runtime[rt] = ort
    if "openvino" in runtimes:
        by_runtime["openvino"], notes = _openvino_problems(path, target)
    return by_runtime, notes
