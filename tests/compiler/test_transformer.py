"""Transformer-aware optimization on a tiny BERT-like encoder: ONNX Runtime fusions, dynamic INT8 of the
MatMul weights, NNCF's transformer scheme and weight compression on OpenVINO, embeddings judged by
cosine/SNR; ``auto`` still picks by measured speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeml
from edgeml.compiler import plan
from edgeml.compiler.modelinfo import is_transformer_like, load_onnx
from edgeml.compiler.passes.base import Artifact, BuildContext
from edgeml.compiler.passes.evaluate import Thresholds, compare
from edgeml.compiler.passes.fuse_transformer import FuseTransformer
from edgeml.compiler.passes.quantize_dynamic import QuantizeDynamic
from edgeml.compiler.request import BuildRequest
from edgeml.errors import ConfigError
from edgeml.targets import get_target
from tests.compiler.conftest import FAST
from tests.support.tiny_models import tiny_cnn
from tests.support.tiny_signatures import tiny_encoder


@pytest.fixture
def encoder(tmp_path: Path) -> Path:
    return tiny_encoder(tmp_path / "enc.onnx", dim=64)


@pytest.fixture
def sentences(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n, seq = 16, 12
    mask = np.ones((n, seq), bool)
    mask[:, 9:] = False
    np.savez(tmp_path / "text.npz", input_ids=rng.integers(1, 64, (n, seq)).astype(np.int64), attention_mask=mask)
    return tmp_path / "text.npz"


def _ctx(tmp_path: Path) -> BuildContext:
    return BuildContext(target=get_target("x86-cpu"), workdir=tmp_path / "work")


def _artifact(path: Path) -> Artifact:
    return Artifact(path=path, format="onnx", precision="fp32", digest="x")


def test_transformer_graphs_are_told_apart_from_cnns(encoder, tmp_path: Path) -> None:
    assert is_transformer_like(load_onnx(encoder))
    assert not is_transformer_like(load_onnx(tiny_cnn(tmp_path / "cnn.onnx")))


def test_fusion_and_dynamic_int8_rewrite_the_encoder(encoder, tmp_path: Path) -> None:
    fused = FuseTransformer().run(_artifact(encoder), _ctx(tmp_path))
    ops = {n.op_type for n in load_onnx(fused.path).graph.node}
    assert fused.metadata["fused_operators"] and "SkipLayerNormalization" in ops
    quantized = QuantizeDynamic().run(fused, _ctx(tmp_path / "q"))
    q_ops = [n.op_type for n in load_onnx(quantized.path).graph.node]
    assert quantized.precision == "int8" and ("DynamicQuantizeMatMul" in q_ops or "MatMulInteger" in q_ops)
    assert quantized.size_bytes < 0.5 * fused.size_bytes   # the MatMul weights are int8 now


def test_plan_rows_for_transformers() -> None:
    names = lambda steps: [n for n, _ in steps]  # noqa: E731
    assert names(plan.row("onnxruntime", "fp32", transformer=True)) == ["fuse_transformer"]
    assert names(plan.row("onnxruntime", "int8", transformer=True)) == ["quantize_dynamic"]
    assert names(plan.row("onnxruntime", "int8", transformer=True, fuse=False)) == ["quantize_ort"]  # GPU: QDQ
    assert names(plan.row("onnxruntime", "int8")) == ["quantize_ort"]
    ov = plan.row("openvino", "int8", transformer=True)
    assert ov[1] == ("quantize_nncf", {"preset": "mixed", "model_type": "transformer"})
    assert names(plan.row("openvino", "int8", weight_compression="int4")) == ["convert_openvino", "compress_weights"]
    with pytest.raises(ConfigError, match="weight compression 'int2'"):
        BuildRequest("m.onnx", "x86-cpu", weight_compression="int2")


def test_embeddings_are_judged_by_cosine_and_snr_not_arg_max() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(8, 384)).astype(np.float32)
    noisy = ref + rng.normal(0, 0.05, ref.shape).astype(np.float32)
    report = compare({"sentence_embedding": ref, "logits": ref}, {"sentence_embedding": noisy, "logits": noisy}, None,
                     Thresholds(min_agreement=0.999, min_cosine=0.99, min_snr_db=20))
    emb, logits = report["outputs"]["sentence_embedding"], report["outputs"]["logits"]
    assert emb["kind"] == "embedding" and emb["agreement"] is None and emb["snr_db"] > 20
    assert logits["kind"] == "class" and logits["agreement"] is not None   # a classifier keeps its top-1
    worse = compare({"sentence_embedding": ref}, {"sentence_embedding": ref + rng.normal(0, 0.3, ref.shape)}, None,
                    Thresholds(min_agreement=None, min_cosine=0.5, min_snr_db=20))
    assert not worse["passed"] and "snr_db" in worse["failures"][0]


def test_auto_on_x86_builds_transformer_candidates_and_picks_the_fastest(encoder, sentences, default_key,
                                                                         tmp_path: Path) -> None:
    result = edgeml.compile(encoder, "x86-cpu", calibration=sentences, output=tmp_path / "enc.edgepkg",
                            weight_compression="int8", **FAST)
    by_label = {c.label: c for c in result.report.candidates}
    steps = {label: [s["name"] for s in c.steps] for label, c in by_label.items()}
    assert steps["onnxruntime/fp32"][0] == "fuse_transformer"
    assert steps["onnxruntime/int8"][0] == "quantize_dynamic"
    assert steps["openvino/int8"][:2] == ["convert_openvino", "compress_weights"]
    passed = [c for c in result.report.candidates if c.status == "passed"]
    assert {"onnxruntime/int8", "openvino/int8"} <= {c.label for c in passed}
    chosen = result.report.chosen
    assert chosen is not None and chosen.speedup == max(c.speedup for c in passed if c.speedup)
    assert chosen.fidelity and chosen.fidelity["outputs"]["sentence_embedding"]["kind"] == "embedding"


def test_jetson_keeps_standard_operators(encoder, sentences, default_key, tmp_path: Path) -> None:
    result = edgeml.compile(encoder, "jetson-orin", precision="fp16", calibration=sentences,
                            output=tmp_path / "j.edgepkg", **FAST)
    steps = [s["name"] for s in result.report.candidates[0].steps]
    assert steps[0] == "fp16" and "fuse_transformer" not in steps   # TensorRT/CUDA: no CPU-fused ops
    assert result.report.chosen is not None and result.report.chosen.label == "onnxruntime/fp16"
