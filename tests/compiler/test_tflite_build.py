"""A real .tflite model (MediaPipe face detection) built directly for arm64-cpu: as it is, and
quantized to INT8 with ai-edge-quantizer, each through the fidelity gate and then served by a real
agent. No TensorFlow and no toolchain involved.

Gate used (stated, not the default): cosine >= 0.95 per output and no arg-max agreement check — the
detector's outputs are box regressions and per-anchor scores, not class distributions, so arg-max over
the 16 box coordinates is meaningless.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeml.compiler import api
from edgeml.compiler.data import SampleSet
from edgeml.compiler.modelinfo import digest_files
from edgeml.compiler.passes.base import Artifact, BuildContext
from edgeml.compiler.passes.quantize_tflite import QuantizeTflite, prepare_for_quantizer
from edgeml.compiler.tflite_inspect import inspect_tflite
from edgeml.errors import ConfigError, QuantizationError
from edgeml.runtimes import open_model
from edgeml.targets import get_target
from tests.compiler.conftest import FAST
from tests.support.real_models import real_model
from tests.support.serve import serve_and_infer
from tests.support.tflite_data import face_inputs

GATE = {"min_agreement": None, "min_cosine": 0.95, "max_drop": None}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_prepare_folds_fp16_weights_adds_a_signature_and_keeps_the_outputs(tmp_path):
    src = real_model("face-detection")
    dst = tmp_path / "prepared.tflite"
    changes = prepare_for_quantizer(src, dst)
    assert changes["fp16_constants_folded"] == inspect_tflite(src).op_counts["DEQUANTIZE"]
    assert changes["signature_added"] == 1 and changes["opcodes_upgraded"] > 0
    info = inspect_tflite(dst)
    assert "DEQUANTIZE" not in info.op_counts and info.precision == "fp32"
    feed = {"input": face_inputs(1)}
    with open_model(src, "litert") as a, open_model(dst, "litert") as b:
        ra, rb = a.run(feed), b.run(feed)
    for name in ra:  # folding fp16 -> fp32 is exact: the same numbers reach the kernels
        np.testing.assert_allclose(ra[name], rb[name], rtol=1e-5, atol=1e-5)


def test_quantize_tflite_pass_gives_int8_kernels_with_a_float_interface(tmp_path):
    src = real_model("face-detection")
    ctx = BuildContext(target=get_target("arm64-cpu"), workdir=tmp_path,
                       calibration=SampleSet([{"input": x[None]} for x in face_inputs(8)]))
    art = QuantizeTflite(mode="static").run(Artifact(src, "tflite", "fp16", digest_files([src])), ctx)
    info = inspect_tflite(art.path)
    assert art.precision == "int8" and art.runtime == "litert"
    assert [(t.name, t.dtype) for t in info.inputs] == [("input", "float32")]
    assert {t.dtype for t in info.outputs} == {"float32"}
    assert info.weight_dtypes.get("int8", 0) > 20 and info.op_counts["QUANTIZE"] >= 1
    assert art.path.stat().st_size < src.stat().st_size  # int8 weights beat the fp16 original
    feed = {"input": face_inputs(12)[10:11]}  # not a calibration sample
    with open_model(src, "litert") as ref, open_model(art.path, "litert") as q:
        r, c = ref.run(feed), q.run(feed)
    assert _cosine(r["regressors"], c["regressors"]) > 0.98
    assert _cosine(r["classificators"], c["classificators"]) > 0.98


def test_quantize_tflite_refuses_bad_config_and_missing_data(tmp_path):
    with pytest.raises(ConfigError, match="mode must be one of static, dynamic, weight_only"):
        QuantizeTflite(mode="int4")
    with pytest.raises(ConfigError, match="unknown option"):
        QuantizeTflite(modes="static")
    src = real_model("face-detection")
    ctx = BuildContext(target=get_target("arm64-cpu"), workdir=tmp_path)
    with pytest.raises(QuantizationError, match="needs calibration data"):
        QuantizeTflite().run(Artifact(src, "tflite", "fp16", digest_files([src])), ctx)
    dyn = QuantizeTflite(mode="dynamic").run(Artifact(src, "tflite", "fp16", digest_files([src])), ctx)
    assert dyn.precision == "int8" and inspect_tflite(dyn.path).inputs[0].dtype == "float32"


def test_face_detection_tflite_builds_fp32_and_int8_bundles_served_by_the_agent(tmp_path, default_key):
    src = real_model("face-detection")
    data = {"input": face_inputs(24)}
    bundles, feeds = {}, {}
    for precision in ("fp32", "int8"):
        name = f"face-{precision}"
        result = api.compile(src, "arm64-cpu", precision=precision, runtime="litert", calibration=data,
                             name=name, output=tmp_path / f"{name}.edgepkg", **GATE, **FAST)
        chosen = result.report.chosen
        assert chosen is not None and chosen.runtime == "litert" and chosen.fidelity["passed"]
        assert chosen.fidelity["cosine"] >= (0.9999 if precision == "fp32" else 0.95)
        bundles[name] = result.bundle_path
        feeds[name] = {"input": face_inputs(1)}
    assert result.report.chosen.precision == "int8"
    served = serve_and_infer(tmp_path, default_key, bundles, feeds)
    with open_model(src, "litert") as ref:
        expected = ref.run({"input": face_inputs(1)})
    np.testing.assert_allclose(served["face-fp32"]["regressors"], expected["regressors"], rtol=1e-4, atol=1e-3)
    for name in expected:
        assert _cosine(served["face-int8"][name], expected[name]) > 0.95


def test_cli_builds_a_tflite_model_for_arm64_with_auto_precision(tmp_path, default_key):
    """`edgeml build model.tflite --target arm64-cpu`: check, quantize, evaluate, benchmark, pack."""
    import json

    from click.testing import CliRunner

    from edgeml.cli import main

    np.savez(tmp_path / "cal.npz", input=face_inputs(24))
    out = tmp_path / "face.edgepkg"
    result = CliRunner().invoke(main, [
        "build", str(real_model("face-detection")), "--target", "arm64-cpu", "--calibration",
        str(tmp_path / "cal.npz"), "--min-agreement", "0", "--min-cosine", "0.95", "--bench-seconds", "0.05",
        "--json", "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    litert = [c for c in report["candidates"] if c["runtime"] == "litert"]
    passed = sorted(c["precision"] for c in litert if c["status"] == "passed")
    # the shipped model as it is (its weights are fp16) and its int8 quantization both pass the gate
    assert passed == ["fp16", "int8"], litert
    int8 = next(c for c in litert if c["precision"] == "int8")
    assert any(
        s["name"] == "convert_tflite" and s["config"].get("precision") == "int8" for s in int8["steps"])
    # ONNX Runtime cannot take a .tflite model: those candidates fail with a reason, never silently
    assert all(c["status"] == "error" and c["reason"] for c in report["candidates"] if c["runtime"] == "onnxruntime")
    assert report["chosen"].startswith("litert/") and out.exists()
