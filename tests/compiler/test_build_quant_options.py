"""Quantizer options through the real ``edgeml build`` (CLI process, onnxruntime's quantizer): each flag
must leave its mark in the signed bundle's graph and provenance, not only reach the pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.compiler.cli_build import (
    bundle_model,
    dequantized,
    edgeml_build,
    initializers,
    node,
    provenance_step,
)
from tests.support.tiny_models import tiny_cnn

INT8_ORT = ("-t", "x86-cpu", "-p", "int8", "--runtime", "onnxruntime")


def _axis(dq_node: Any) -> int | None:
    return next((a.i for a in dq_node.attribute if a.name == "axis"), None)


def test_per_channel_gives_every_output_channel_its_own_weight_scale(cnn, cnn_data, default_key, tmp_path) -> None:
    run = edgeml_build(cnn, *INT8_ORT, "-c", str(cnn_data), "--per-channel", "-o", str(tmp_path / "pc.edgepkg"))
    assert run.report["chosen"] == "onnxruntime/int8"
    manifest, model = bundle_model(tmp_path / "pc.edgepkg", tmp_path / "u")
    inits, dq = initializers(model), dequantized(model)
    # tiny_cnn: conv1 8 filters, conv2 16 filters (axis 0 of a Conv weight), fc 10 outputs (axis 1 of Gemm's B)
    for weight, axis, channels in (("w1", 0, 8), ("w2", 0, 16), ("wf", 1, 10)):
        q = dq[f"{weight}_quantized"]
        assert _axis(q) == axis, f"{weight}: DequantizeLinear axis {_axis(q)}"
        scale = inits[q.input[1]]
        assert scale.shape == (channels,) and len(set(scale.tolist())) == channels, f"{weight}: scales {scale}"
    assert manifest["precision"] == "int8"
    assert provenance_step(manifest, "quantize_ort")["config"]["per_channel"] is True


@pytest.fixture
def cnn64_with_outlier(tmp_path: Path) -> tuple[Path, Path]:
    """A 64x64 CNN and calibration images in [0, 1) of which one holds a single pixel at 40: one value in
    ~220,000, far beyond the 99.999th percentile, so percentile and entropy calibration clip it and MinMax
    cannot."""
    model = tiny_cnn(tmp_path / "cnn64.onnx", size=64)
    x = np.random.default_rng(3).random((24, 3, 64, 64), dtype=np.float32)
    x[5, 0, 10, 10] = 40.0   # a calibration sample (the gate holds out every fourth sample from the end)
    np.savez(tmp_path / "outlier.npz", input=x)
    return model, tmp_path / "outlier.npz"


def test_calibration_method_is_recorded_and_clipping_methods_drop_an_outlier_minmax_keeps(
        cnn64_with_outlier, default_key, tmp_path) -> None:
    model, data = cnn64_with_outlier
    scales = {}
    for method in ("minmax", "percentile", "entropy"):
        out = tmp_path / f"{method}.edgepkg"
        run = edgeml_build(model, *INT8_ORT, "-c", str(data), "--calibration-method", method, "-o", str(out))
        assert run.report["chosen"] == "onnxruntime/int8"
        manifest, graph = bundle_model(out, tmp_path / f"u-{method}")
        assert provenance_step(manifest, "quantize_ort")["config"]["calibration_method"] == method
        scales[method] = float(initializers(graph)["input_scale"])
    # uint8 input range / 255: MinMax spans the outlier (40 / 255), percentile only the image values (1 / 255);
    # entropy keeps the threshold with the least information loss, far below the outlier (its search goes
    # down to 1/8 of the range)
    assert scales["minmax"] == pytest.approx(40 / 255, rel=0.01)
    assert scales["percentile"] == pytest.approx(1 / 255, rel=0.05)
    assert 1 / 255 < scales["entropy"] < scales["minmax"] / 4


def test_excluded_node_and_op_type_stay_float_in_the_bundle(cnn, cnn_data, default_key, tmp_path) -> None:
    out = tmp_path / "ex.edgepkg"
    run = edgeml_build(cnn, *INT8_ORT, "-c", str(cnn_data), "--exclude-node", "conv2", "--exclude-op-type", "Gemm",
                       "-o", str(out))
    assert run.report["chosen"] == "onnxruntime/mixed"          # part INT8, part float: said so
    manifest, model = bundle_model(out, tmp_path / "u")
    assert manifest["precision"] == "mixed"
    inits = initializers(model)
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    conv1, conv2, fc = node(model, "conv1"), node(model, "conv2"), node(model, "fc")
    assert conv1.input[1] in dq_outputs                         # not excluded: INT8 weights, dequantized
    for excluded, weight in ((conv2, "w2"), (fc, "wf")):         # by name / by op type: the float weights
        assert excluded.input[1] == weight and inits[weight].dtype == np.float32, excluded
        assert f"{weight}_quantized" not in inits
    config = provenance_step(manifest, "quantize_ort")["config"]
    assert config["exclude_nodes"] == ["conv2"] and config["exclude_op_types"] == ["Gemm"]
