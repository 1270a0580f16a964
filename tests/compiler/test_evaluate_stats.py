from __future__ import annotations

import numpy as np
import pytest

from edgeml.compiler.passes.evaluate import Thresholds, compare, output_metrics
from edgeml.compiler.stats import class_distribution, histogram, reference_stats
from edgeml.errors import ConfigError


def test_identical_outputs_pass_with_perfect_numbers() -> None:
    ref = {"probs": np.random.default_rng(0).random((20, 5)).astype(np.float32)}
    rep = compare(ref, {"probs": ref["probs"].copy()}, None, Thresholds())
    m = rep["outputs"]["probs"]
    assert rep["passed"] and rep["failures"] == []
    assert m["agreement"] == 1.0 and m["cosine"] == pytest.approx(1.0) and m["snr_db"] == 120.0
    assert m["max_abs_error"] == 0.0


def test_a_candidate_that_flips_classes_fails_with_the_numbers() -> None:
    ref = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 5]
    cand = ref.copy()
    cand[:5] = np.eye(4, dtype=np.float32)[[1, 2, 3, 0, 1]]
    rep = compare({"p": ref}, {"p": cand}, None, Thresholds(min_agreement=0.9, min_cosine=None))
    assert not rep["passed"]
    assert rep["outputs"]["p"]["agreement"] == 0.75
    assert rep["failures"] == ["output 'p': agreement 0.7500 (needs >= 0.9)"]


def test_snr_and_max_abs_error_thresholds() -> None:
    ref = np.linspace(-1, 1, 100, dtype=np.float32).reshape(1, 1, 10, 10)
    noisy = ref + np.float32(0.01)
    m = output_metrics(ref, noisy)
    assert m["agreement"] is None  # a map, not class scores: its arg-max would be noise
    assert 30 < m["snr_db"] < 40 and m["max_abs_error"] == pytest.approx(0.01, abs=1e-6)
    rep = compare({"o": ref}, {"o": noisy}, None, Thresholds(min_snr_db=45, max_abs_error=0.001))
    assert len(rep["failures"]) == 2 and "snr_db" in rep["failures"][0] and "max_abs_error" in rep["failures"][1]


def test_integer_label_outputs_compare_exactly_and_give_accuracy() -> None:
    labels = np.array([0, 1, 2, 1, 0])
    ref = {"label": np.array([0, 1, 2, 1, 1]), "prob": np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 1]]}
    cand = {"label": np.array([0, 1, 2, 2, 1]), "prob": np.eye(3, dtype=np.float32)[[0, 1, 2, 2, 1]]}
    rep = compare(ref, cand, labels, Thresholds(min_agreement=None, min_cosine=None, max_drop=0.1))
    assert rep["outputs"]["label"]["agreement"] == 0.8 and rep["outputs"]["label"]["cosine"] is None
    assert rep["reference_accuracy"] == 0.8 and rep["accuracy"] == 0.6
    assert rep["accuracy_drop"] == pytest.approx(0.2)
    assert not rep["passed"] and "drop 0.2000" in rep["failures"][0]


def test_labels_without_a_class_output_is_a_config_error() -> None:
    ref = {"map": np.zeros((2, 1, 4, 4), dtype=np.float32)}
    with pytest.raises(ConfigError, match="class predictions"):
        compare(ref, ref, np.array([0, 1]), Thresholds())


def test_histogram_edges_and_counts() -> None:
    h = histogram(np.array([0.0, 0.5, 1.0, 1.0]), bins=2)
    assert h == {"edges": [0.0, 0.5, 1.0], "counts": [1, 3]}
    flat = histogram(np.full(3, 7.0), bins=4)
    assert flat["edges"][0] == 6.5 and flat["edges"][-1] == 7.5 and sum(flat["counts"]) == 3


def test_reference_stats_schema() -> None:
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    probs = np.eye(4, dtype=np.float32)[[0, 0, 1, 3, 3, 3, 0, 1, 1, 1]]
    stats = reference_stats({"x": x}, {"probs": probs, "feat": x}, samples=10, bins=8)
    assert stats["schema"] == 1 and stats["samples"] == 10 and stats["bins"] == 8
    sx = stats["inputs"]["x"]
    assert sx["count"] == 30 and sx["mean"] == pytest.approx(float(x.mean()), rel=1e-5)
    assert len(sx["histogram"]["edges"]) == 9 and sum(sx["histogram"]["counts"]) == 30
    assert "class_distribution" not in sx
    assert stats["outputs"]["probs"]["class_distribution"] == {"classes": 4, "counts": [3, 4, 0, 3]}
    assert stats["outputs"]["feat"]["class_distribution"]["classes"] == 3  # any float [N, C>1] output counts
    assert class_distribution(np.array([2, 0, 2])) == {"classes": 3, "counts": [1, 0, 2]}
    assert class_distribution(np.zeros((2, 1, 4, 4), dtype=np.float32)) is None


def test_agreement_applies_to_class_scores_and_probability_sequences_only() -> None:
    from edgeml.compiler.passes.evaluate import is_class_output

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7)).astype(np.float32)
    seq = np.exp(rng.normal(size=(2, 5, 9))).astype(np.float32)
    seq /= seq.sum(-1, keepdims=True)
    assert is_class_output(logits) and is_class_output(seq)
    assert not is_class_output(rng.random((1, 1, 8, 8)).astype(np.float32))   # a detector's map
    assert not is_class_output(rng.normal(size=(1, 10, 6)).astype(np.float32))  # boxes
    assert not is_class_output(np.zeros((4, 1), dtype=np.float32))
    flipped = seq.copy()
    flipped[0, 0] = flipped[0, 0][::-1]
    assert output_metrics(seq, flipped)["agreement"] == pytest.approx(0.9)


def test_choose_prefers_the_best_paired_speedup_and_calls_out_slow_quantized_candidates() -> None:
    from edgeml.compiler.report import BuildReport, Candidate, choose

    def cand(rt: str, prec: str, p50: float, speedup: float, status: str = "passed") -> Candidate:
        return Candidate(rt, prec, status=status, benchmark={"p50_ms": p50, "p99_ms": p50}, speedup=speedup,
                         reason="" if status == "passed" else "output 'y': cosine 0.5 (needs >= 0.98)")

    report = BuildReport("m.onnx", "x86-cpu", "auto", baseline={"p50_ms": 10.0, "p99_ms": 11.0})
    report.candidates = [cand("onnxruntime", "fp32", 9.0, 1.05), cand("onnxruntime", "int8", 8.0, 0.6),
                         cand("openvino", "int8", 7.0, 1.6), cand("openvino", "fp16", 1.0, 9.0, status="failed")]
    best = choose(report)
    # openvino/int8 wins on the paired ratio even though raw p50s (measured at other times) disagree
    assert best is not None and best.label == "openvino/int8"
    assert "onnxruntime/int8 is 1.75x slower than onnxruntime/fp32 on this host: not chosen" in report.notes
    assert "rejected: openvino/fp16 (failed: output 'y': cosine 0.5" in report.why
    explicit = BuildReport("m.onnx", "x86-cpu", "int8", baseline={"p50_ms": 10.0, "p99_ms": 11.0})
    explicit.candidates = [cand("onnxruntime", "int8", 12.0, 0.8)]
    assert choose(explicit) is explicit.candidates[0]
    assert any("slower than the FP32 baseline" in n for n in explicit.notes)
    assert any("no candidate beat the source model" in n for n in explicit.notes)
    nothing = BuildReport("m.onnx", "x86-cpu", "auto")
    nothing.candidates = [cand("onnxruntime", "int8", 1.0, 1.0, status="failed")]
    assert choose(nothing) is None
