"""Reading .tflite files without TensorFlow, and custom-op detection at check time.

Facts asserted here were verified on this project's hosts: ai-edge-litert 2.x runs MediaPipe's
Convolution2DTransposeBias (selfie_segmentation); nobody but MediaPipe's own runtime runs the three
custom ops of face_landmark_with_attention.
"""

from __future__ import annotations

import pytest

from edgeml.compiler import api
from edgeml.compiler.tflite_inspect import (
    CUSTOM_OPS,
    custom_op_problems,
    describe_custom_ops,
    inspect_tflite,
    is_tflite,
    probe_litert,
)
from edgeml.errors import ConfigError, ModelCheckError
from tests.compiler.conftest import FAST
from tests.support.real_models import real_model
from tests.support.tflite_data import face_inputs, mediapipe_model


def test_face_detection_is_described_from_the_flatbuffer():
    info = inspect_tflite(real_model("face-detection"))
    assert [(t.name, t.dtype, t.shape) for t in info.inputs] == [("input", "float32", (1, 128, 128, 3))]
    assert sorted((t.name, t.shape) for t in info.outputs) == [("classificators", (1, 896, 1)),
                                                              ("regressors", (1, 896, 16))]
    assert info.custom_ops == [] and info.flex_ops == []
    assert info.op_counts["CONV_2D"] > 10 and info.op_counts["DEQUANTIZE"] > 10
    assert info.precision == "fp16"  # MediaPipe ships FP16 weights behind DEQUANTIZE ops
    assert info.subgraphs == 1


def test_selfie_segmentation_custom_op_runs_in_ai_edge_litert_but_not_tflite_runtime():
    path = real_model("selfie-segmentation")
    info = inspect_tflite(path)
    assert info.custom_ops == ["Convolution2DTransposeBias"]
    assert custom_op_problems(info, "ai-edge-litert") == []
    problems = custom_op_problems(info, "tflite-runtime")
    assert len(problems) == 1 and "MediaPipe custom op" in problems[0] and "tflite-runtime cannot" in problems[0]
    assert "ai-edge-litert" in describe_custom_ops(info)[0]
    assert probe_litert(path) is None  # the installed interpreter really loads it


def test_mediapipe_graph_only_custom_ops_are_reported_with_the_runtime_that_can_run_them():
    path = mediapipe_model("face_landmark_with_attention.tflite")
    info = inspect_tflite(path)
    assert info.custom_ops == ["Landmarks2TransformMatrix", "TransformLandmarks", "TransformTensorBilinear"]
    problems = custom_op_problems(info, "ai-edge-litert")
    assert len(problems) == 3 and all("only MediaPipe's own runtime" in p for p in problems)
    assert "unresolved custom op" in (probe_litert(path) or "")
    assert not CUSTOM_OPS["Landmarks2TransformMatrix"].ai_edge_litert


def test_not_a_tflite_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"\x00" * 64)
    assert not is_tflite(bogus)
    with pytest.raises(ConfigError, match="not a TFLite model"):
        inspect_tflite(bogus)


def test_check_pass_rejects_a_custom_op_model_naming_every_op(tmp_path, default_key):
    model = mediapipe_model("face_landmark_with_attention.tflite")
    with pytest.raises(ModelCheckError) as err:
        api.compile(model, "arm64-cpu", precision="fp32", output=tmp_path / "x.edgepkg", **FAST)
    assert len(err.value.problems) == 3
    assert "TransformTensorBilinear is a MediaPipe custom op" in str(err.value)


def test_check_pass_refuses_tflite_on_a_target_without_litert(tmp_path, default_key):
    with pytest.raises(ModelCheckError, match="runs only on the 'litert' runtime"):
        api.compile(real_model("face-detection"), "x86-cpu", precision="fp32", output=tmp_path / "x.edgepkg",
                    **FAST)


def test_selfie_segmentation_builds_and_the_report_names_its_custom_op(tmp_path, default_key):
    cal = {"input_1": (face_inputs(6, size=256) + 1.0) / 2.0}  # selfie segmentation takes [0, 1] RGB
    result = api.compile(real_model("selfie-segmentation"), "arm64-cpu", precision="fp32", calibration=cal,
                         output=tmp_path / "selfie.edgepkg", **FAST)
    assert result.report.chosen is not None and result.report.chosen.runtime == "litert"
    assert any("Convolution2DTransposeBias: MediaPipe custom op" in n for n in result.report.notes)
    assert result.bundle_path.exists()
