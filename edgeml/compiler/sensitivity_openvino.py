"""Sensitivity ranking for NNCF-quantized OpenVINO IR (the ``--fallback`` path of OpenVINO targets).

NNCF keeps the friendly names of the FP32 IR's ops and adds, per quantized op, FakeQuantize nodes on its
activation inputs and an int8 weight chain (Constant → Convert → Multiply ``…/fq_weights_N``). Ignoring an
op (``ignored_names``) removes exactly those, so an op is judged on its own output error against the
error of its inputs *before* their FakeQuantize, with the same score as the ONNX ranking
(:func:`edgeml.compiler.sensitivity.own_damage`). Both IRs run on OpenVINO's CPU plugin in f32
inference precision, with the compared tensors added as extra outputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from edgeml.arrays import Array
from edgeml.compiler.sensitivity_scores import first_samples, nmse, own_damage, top_names
from edgeml.errors import CompileError

if TYPE_CHECKING:
    from openvino import Input, Model, Node, Output

SKIPPED_TYPES = {"Parameter", "Result", "Constant", "Convert", "FakeQuantize"}


def _source(port: Input) -> Output:
    return port.get_source_output()


def _is_weight_chain(output: Output) -> bool:
    """Does this input come from NNCF's compressed weights (int8/uint8 constant, converted and scaled)?"""
    node = output.get_node()
    for _ in range(4):  # Multiply <- (Subtract <-) Convert <- Constant
        if node.get_type_name() == "Constant":
            return node.get_output_element_type(0).get_type_name() in ("i8", "u8", "i4", "u4")
        if node.get_type_name() not in ("Multiply", "Subtract", "Convert") or not node.inputs():
            return False
        node = _source(node.input(0)).get_node()
    return False


def _before_fake_quantize(output: Output) -> Output:
    node = output.get_node()
    return _source(node.input(0)) if node.get_type_name() == "FakeQuantize" else output


def _run_with_outputs(ov: ModuleType, model: Model, wanted: list[Output], feeds: list[Mapping[str, Array]],
                      input_names: list[str]) -> list[list[Array]]:
    """Values of ``wanted`` outputs (in order) for each feed."""
    results = model.add_outputs(wanted) if wanted else []
    index = {r.get_node().get_friendly_name(): i for i, r in enumerate(model.outputs)}
    positions = [index[r.get_node().get_friendly_name()] for r in results]
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    values = []
    for feed in feeds:
        out = request.infer({name: np.asarray(feed[name]) for name in input_names})
        values.append([np.array(out[compiled.outputs[p]]) for p in positions])
    return values


def rank_sensitive_ops(reference: Path, candidate: Path, samples: Iterable[Mapping[str, Array]],
                       top_k: int, max_samples: int = 8) -> list[str]:
    """Friendly names of the ``top_k`` quantized ops of ``candidate`` (NNCF IR) that hurt most."""
    from edgeml.runtimes.openvino_backend import import_openvino

    ov = import_openvino()
    core = ov.Core()
    ref_model, cand_model = core.read_model(str(reference)), core.read_model(str(candidate))
    ref_ops = {op.get_friendly_name(): op for op in ref_model.get_ops()}
    chosen: list[tuple[Node, Node, list[tuple[Output, Output]]]] = []     # (cand op, ref op, [(cand in, ref in)])
    for op in cand_model.get_ordered_ops():
        twin = ref_ops.get(op.get_friendly_name())
        if op.get_type_name() in SKIPPED_TYPES or twin is None or twin.get_type_name() != op.get_type_name():
            continue
        sources = [_source(p) for p in op.inputs()]
        quantized = any(s.get_node().get_type_name() == "FakeQuantize" or _is_weight_chain(s) for s in sources)
        if not quantized or len(op.inputs()) != len(twin.inputs()):
            continue
        activations = [(_before_fake_quantize(s), _source(t))
                       for s, t in zip(sources, twin.inputs(), strict=True)
                       if not _is_weight_chain(s) and s.get_node().get_type_name() != "Constant"]
        chosen.append((op, twin, activations))
    if not chosen:
        raise CompileError(
            f"{candidate.name} has no quantized op named like an op of {reference.name}: is it the NNCF "
            f"INT8 version of that IR?"
        )
    feeds = first_samples(samples, max_samples)

    cand_wanted = [op.output(0) for op, _, _ in chosen] + [c for _, _, acts in chosen for c, _ in acts]
    ref_wanted = [twin.output(0) for _, twin, _ in chosen] + [r for _, _, acts in chosen for _, r in acts]
    input_names = [p.get_any_name() for p in ref_model.inputs]
    cand_values = _run_with_outputs(ov, cand_model, cand_wanted, feeds, input_names)
    ref_values = _run_with_outputs(ov, ref_model, ref_wanted, feeds, input_names)
    errors = np.zeros(len(cand_wanted))
    for cand_row, ref_row in zip(cand_values, ref_values, strict=True):
        for i, (c, r) in enumerate(zip(cand_row, ref_row, strict=True)):
            errors[i] += nmse(c, r) / len(feeds) if c.shape == r.shape else 0.0

    scores: dict[str, tuple[float, float]] = {}
    offset = len(chosen)
    for k, (op, _, acts) in enumerate(chosen):
        error_in = max(errors[offset:offset + len(acts)], default=0.0)
        offset += len(acts)
        scores[op.get_friendly_name()] = (own_damage(float(errors[k]), float(error_in)), float(errors[k]))
    return top_names(scores, top_k)
