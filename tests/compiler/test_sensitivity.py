"""rank_sensitive_nodes: find the layers whose quantization hurts most, for --fallback."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgeml.bundle import sha256_file
from edgeml.compiler.passes.base import Artifact, BuildContext, get_pass
from edgeml.compiler.sensitivity import rank_sensitive_nodes
from edgeml.errors import CompileError
from edgeml.targets import get_target
from tests.support.tiny_models import tiny_cnn


def samples(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.random((1, 3, 16, 16), dtype=np.float32)} for _ in range(n)]


def cnn_with_outlier_weight(path: Path) -> Path:
    """tiny_cnn whose conv2 has one huge weight: per-tensor INT8 then rounds its other weights away."""
    tiny_cnn(path, size=16)
    model = onnx.load(str(path))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "w2":
            w2 = numpy_helper.to_array(init).copy()
            w2[0, 0, 0, 0] = 60.0
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w2, "w2"))
    onnx.save(model, str(path))
    return path


def quantize(model: Path, workdir: Path, cal: list[dict], **config) -> Path:
    art = Artifact(path=model, format="onnx", precision="fp32", digest=sha256_file(model))
    ctx = BuildContext(target=get_target("x86-cpu"), workdir=workdir, calibration=cal)
    return get_pass("quantize_ort")(**config).run(art, ctx).path


def output_cosine(reference: Path, candidate: Path, feeds: list[dict]) -> float:
    ref = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
    a = np.concatenate([ref.run(None, f)[0].ravel() for f in feeds]).astype(np.float64)
    b = np.concatenate([cand.run(None, f)[0].ravel() for f in feeds]).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_finds_the_layer_that_quantization_breaks_and_excluding_it_helps(tmp_path: Path) -> None:
    model = cnn_with_outlier_weight(tmp_path / "cnn.onnx")
    cal, held_out = samples(16), samples(8, seed=1)
    quantized = quantize(model, tmp_path / "q1", cal)

    started = time.perf_counter()
    ranked = rank_sensitive_nodes(model, quantized, held_out, top_k=2)
    elapsed = time.perf_counter() - started

    assert ranked[0] == "conv2"
    assert len(ranked) <= 2
    assert elapsed < 30          # generous: "a few seconds" on a small CNN, this is only a hang guard
    fixed = quantize(model, tmp_path / "q2", cal, exclude_nodes=ranked[:1])
    before, after = output_cosine(model, quantized, held_out), output_cosine(model, fixed, held_out)
    assert after > before
    assert after > 0.99


def test_top_k_bounds_the_list_and_only_quantized_nodes_are_named(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx")
    quantized = quantize(model, tmp_path / "q", samples(8))
    everything = rank_sensitive_nodes(model, quantized, samples(4, seed=3), top_k=50)
    # nodes with int8 weights or a re-quantized output; ORT folded the Relus into the Convs' Q/DQ and
    # leaves Softmax's output in float, so those are never named
    assert {"conv1", "conv2", "fc"} <= set(everything) <= {"conv1", "conv2", "gap", "flatten", "fc"}
    assert len(everything) == len(set(everything))
    assert rank_sensitive_nodes(model, quantized, samples(4, seed=3), top_k=2) == everything[:2]
    assert rank_sensitive_nodes(model, quantized, samples(2), top_k=0) == []


def test_fp16_candidates_are_ranked_too(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx")
    art = Artifact(path=model, format="onnx", precision="fp32", digest=sha256_file(model))
    fp16 = get_pass("fp16")().run(art, BuildContext(target=get_target("x86-cpu"), workdir=tmp_path / "f"))
    ranked = rank_sensitive_nodes(model, fp16.path, samples(2), top_k=3)
    assert 1 <= len(ranked) <= 3
    assert set(ranked) <= {n.name for n in onnx.load(str(model)).graph.node}


def test_candidate_unrelated_to_the_reference_is_an_error(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx")
    other = tiny_cnn(tmp_path / "other.onnx", seed=5)
    renamed = onnx.load(str(other))
    for node in renamed.graph.node:
        node.name = "x_" + node.name
    onnx.save(renamed, str(other))
    with pytest.raises(CompileError, match=r"no reduced-precision node named like a node of cnn.onnx"):
        rank_sensitive_nodes(model, other, samples(2), top_k=3)


def test_no_samples_is_an_error(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx")
    quantized = quantize(model, tmp_path / "q", samples(4))
    with pytest.raises(CompileError, match=r"at least one sample"):
        rank_sensitive_nodes(model, quantized, [], top_k=3)


def test_openvino_ir_ranking_names_ops_that_nncf_can_ignore(tmp_path: Path) -> None:
    """For NNCF IR the names are OpenVINO op names; ignoring the top one must bring the output closer."""
    from edgeml.runtimes.openvino_backend import import_openvino

    model = cnn_with_outlier_weight(tmp_path / "cnn.onnx")
    cal, held_out = samples(16), samples(8, seed=1)
    art = Artifact(path=model, format="onnx", precision="fp32", digest=sha256_file(model))
    ctx = BuildContext(target=get_target("x86-cpu"), workdir=tmp_path / "ir", calibration=cal)
    ir = get_pass("convert_openvino")().run(art, ctx)
    int8 = get_pass("quantize_nncf")().run(ir, BuildContext(target=ctx.target, workdir=tmp_path / "a", calibration=cal))

    ranked = rank_sensitive_nodes(ir.path, int8.path, held_out, top_k=2)

    ov = import_openvino()
    op_names = {op.get_friendly_name() for op in ov.Core().read_model(str(ir.path)).get_ops()}
    assert ranked and set(ranked) <= op_names
    fixed = get_pass("quantize_nncf")(ignored_names=ranked[:1]).run(
        ir, BuildContext(target=ctx.target, workdir=tmp_path / "b", calibration=cal))

    def outputs(xml: Path) -> np.ndarray:
        compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return np.concatenate([np.asarray(compiled(f)[compiled.outputs[0]]).ravel() for f in held_out])

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    reference = outputs(ir.path)
    assert cos(reference, outputs(fixed.path)) > cos(reference, outputs(int8.path))
