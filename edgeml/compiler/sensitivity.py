"""Which nodes does quantization hurt most? Used by ``--fallback`` to keep those in float.

Both models run once per sample with every intermediate tensor exposed as an output. onnxruntime's QDQ
quantizer keeps the FP32 graph's node names and the names of the tensors its compute nodes write; what a
consumer reads is that tensor after its QuantizeLinear → DequantizeLinear pair. So each candidate node is
judged on what it really reads and writes: the error of its (re-quantized) output against the worst
error already on its (dequantized) inputs (see :func:`own_damage`). That covers its weights' and its
output's quantization, which is what excluding the node from quantization removes. Ranking by raw
output error instead would always blame the last layers, since error accumulates along the graph.
Errors are normalised mean squared errors (``‖c − r‖² / ‖r‖²``), averaged over the samples.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeml.arrays import Array
from edgeml.compiler.sensitivity_scores import first_samples, nmse, own_damage, top_names
from edgeml.errors import CompileError, MissingExtraError

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto
    from onnxruntime import InferenceSession

MAX_SAMPLES = 8          # a few samples rank layers reliably; every tensor of every sample is kept in memory
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def _expose_all(model: ModelProto, names: Iterable[str], path: Path) -> None:
    """Save ``model`` with every tensor in ``names`` added as a graph output."""
    from onnx import helper, save

    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    save(model, str(path))


def _session(path: Path) -> InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # No fusions: they would hide the exposed tensors and change the arithmetic being measured.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _after_qdq(candidate: ModelProto) -> dict[str, str]:
    """{tensor: the DequantizeLinear output consumers read instead} for tensors behind a Q → DQ pair."""
    quantized_by = {n.input[0]: n.output[0] for n in candidate.graph.node if n.op_type == "QuantizeLinear"}
    dequantized_by = {n.input[0]: n.output[0] for n in candidate.graph.node if n.op_type == "DequantizeLinear"}
    return {t: dequantized_by[q] for t, q in quantized_by.items() if q in dequantized_by}


def _before_qdq(candidate: ModelProto) -> dict[str, str]:
    """{DequantizeLinear output: the float tensor that was quantized} (weights included)."""
    quantized_from = {n.output[0]: n.input[0] for n in candidate.graph.node if n.op_type == "QuantizeLinear"}
    return {n.output[0]: quantized_from.get(n.input[0], n.input[0])
            for n in candidate.graph.node if n.op_type == "DequantizeLinear"}


def _own_quantization(candidate: ModelProto, nodes: list[NodeProto]) -> list[NodeProto]:
    """The nodes that quantize something of their own: int8 weights, or an output that is re-quantized.

    Pass-through ops (pooling, Flatten, Resize...) that only read dequantized tensors compute in float;
    excluding them changes nothing, however much error flows through them.
    """
    initializers = {i.name for i in candidate.graph.initializer}
    before, after = _before_qdq(candidate), _after_qdq(candidate)
    return [n for n in nodes
            if any(before.get(i) in initializers for i in n.input) or any(o in after for o in n.output)]


def rank_sensitive_nodes(reference: Path, candidate: Path, samples: Iterable[Mapping[str, Array]],
                         top_k: int) -> list[str]:
    """Names (in the reference graph) of the ``top_k`` quantized nodes whose quantization hurts most.

    ``reference`` is the FP32 ONNX model that was quantized, ``candidate`` its quantized (QDQ) or FP16
    version (for FP16 the names go to the fp16 pass's ``block_nodes``), ``samples`` feed dicts (the
    first few are used). For an OpenVINO IR pair (``.xml``: the FP32 IR and its NNCF INT8 version) the
    names are OpenVINO op names for ``quantize_nncf``'s ``ignored_names`` (see
    :mod:`edgeml.compiler.sensitivity_openvino`). Only nodes present under the same name and op type in
    both graphs are ranked.
    Nodes whose own damage is not positive are never returned, so the list can be shorter than
    ``top_k``. The names are accepted by ``quantize_ort``'s ``exclude_nodes``.
    """
    try:
        import onnx
    except ImportError as exc:
        raise MissingExtraError("onnx", "compile", "ranking sensitive layers") from exc
    if top_k < 1:
        return []
    if candidate.suffix == ".xml":
        from edgeml.compiler.sensitivity_openvino import rank_sensitive_ops

        return rank_sensitive_ops(reference, candidate, samples, top_k)
    ref_model = onnx.load(str(reference))
    cand_model = onnx.load(str(candidate))
    ref_types = {n.name: n.op_type for n in ref_model.graph.node if n.name}
    ref_tensors = {o for n in ref_model.graph.node for o in n.output} | {i.name for i in ref_model.graph.input}
    has_qdq = any(n.op_type == "DequantizeLinear" for n in cand_model.graph.node)
    nodes = [n for n in cand_model.graph.node
             if ref_types.get(n.name) == n.op_type and n.op_type not in QDQ_OPS and n.op_type != "Constant"]
    if has_qdq:
        nodes = _own_quantization(cand_model, nodes)
    if not nodes:
        raise CompileError(
            f"{candidate.name} has no reduced-precision node named like a node of {reference.name}: is it "
            f"a QDQ or FP16 model made from that reference?"
        )
    feeds = first_samples(samples, MAX_SAMPLES)

    after, before = _after_qdq(cand_model), _before_qdq(cand_model)
    # Reference tensor name -> the candidate tensor that carries it, as consumers read it.
    watched = {o for n in nodes for o in n.output if o in ref_tensors}
    watched |= {before.get(i, i) for n in nodes for i in n.input if before.get(i, i) in ref_tensors}
    pairs = sorted((t, after.get(t, t)) for t in watched)
    errors = _tensor_errors(ref_model, cand_model, pairs, feeds)

    scores: dict[str, tuple[float, float]] = {}
    for node in nodes:
        outs = [errors[o] for o in node.output if o in errors]
        if not outs:
            continue
        ins = [errors.get(before.get(i, i), 0.0) for i in node.input if i]
        scores[node.name] = (own_damage(max(outs), max(ins, default=0.0)), max(outs))
    return top_names(scores, top_k)


def _tensor_errors(ref_model: ModelProto, cand_model: ModelProto, pairs: list[tuple[str, str]],
                   feeds: list[Mapping[str, Array]]) -> dict[str, float]:
    """Mean NMSE of each (reference tensor, candidate tensor) pair over the samples, by reference name."""
    errors: dict[str, list[float]] = {r: [] for r, _ in pairs}
    ref_names = [r for r, _ in pairs]
    cand_names = [c for _, c in pairs]
    with tempfile.TemporaryDirectory(prefix="edgeml-sensitivity-") as tmp:
        _expose_all(ref_model, ref_names, Path(tmp) / "reference.onnx")
        _expose_all(cand_model, cand_names, Path(tmp) / "candidate.onnx")
        ref_sess = _session(Path(tmp) / "reference.onnx")
        cand_sess = _session(Path(tmp) / "candidate.onnx")
        input_names = [i.name for i in ref_sess.get_inputs()]
        for feed in feeds:
            inputs = {name: np.asarray(feed[name]) for name in input_names}
            ref_out = ref_sess.run(ref_names, inputs)
            cand_out = cand_sess.run(cand_names, inputs)
            for (name, _), r, c in zip(pairs, ref_out, cand_out, strict=True):
                r, c = np.asarray(r), np.asarray(c)
                if r.shape == c.shape and np.issubdtype(r.dtype, np.floating) and np.issubdtype(c.dtype, np.floating):
                    errors[name].append(nmse(c, r))
    return {t: float(np.mean(v)) for t, v in errors.items() if v}
