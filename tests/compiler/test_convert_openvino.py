"""convert_openvino: ONNX → OpenVINO IR, static shapes for targets that need them (OpenVINO CPU plugin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeml.bundle import sha256_file
from edgeml.compiler.modelinfo import digest_files
from edgeml.compiler.passes.base import Artifact, BuildContext, get_pass
from edgeml.errors import ConfigError, ConversionError
from edgeml.runtimes.openvino_backend import import_openvino
from edgeml.targets import get_target
from tests.support.real_models import real_model
from tests.support.tiny_models import tiny_cnn


def fp32_artifact(path: Path) -> Artifact:
    return Artifact(path=path, format="onnx", precision="fp32", digest=sha256_file(path))


def make_ctx(tmp_path: Path, target: str = "x86-cpu") -> BuildContext:
    return BuildContext(target=get_target(target), workdir=tmp_path / "work")


def run_ir(xml: Path, feed: dict) -> np.ndarray:
    ov = import_openvino()
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(feed)[compiled.outputs[0]])


def run_onnx(path: Path, feed: dict) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def input_shapes(xml: Path) -> dict[str, list[int] | str]:
    model = import_openvino().Core().read_model(str(xml))
    return {p.get_any_name(): str(p.get_partial_shape()) for p in model.inputs}


def test_dynamic_model_reshaped_to_static_ir_for_the_npu(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx", batch="N")
    feed = {"input": np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)}

    out = get_pass("convert_openvino")(input_shapes={"input": [1, 3, 16, 16]}).run(
        fp32_artifact(model), make_ctx(tmp_path, "intel-npu"))

    assert out.format == "openvino" and out.runtime == "openvino" and out.precision == "fp32"
    assert out.path.suffix == ".xml" and out.extra_files == (out.path.with_suffix(".bin"),)
    assert out.extra_files[0].stat().st_size > 0
    assert out.digest == digest_files([out.path, *out.extra_files])
    assert input_shapes(out.path) == {"input": "[1,3,16,16]"}
    assert out.metadata["input_shapes_before"] == {"input": "[?,3,16,16]"}
    np.testing.assert_allclose(run_ir(out.path, feed), run_onnx(model, feed), rtol=1e-4, atol=1e-5)


def test_npu_target_refuses_a_model_left_dynamic(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx", batch="N")
    with pytest.raises(ConversionError, match=r"intel-npu needs static shapes.*input.*--input-shape"):
        get_pass("convert_openvino")().run(fp32_artifact(model), make_ctx(tmp_path, "intel-npu"))


def test_cpu_target_keeps_dynamic_shapes(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx", batch="N")
    out = get_pass("convert_openvino")().run(fp32_artifact(model), make_ctx(tmp_path))
    assert input_shapes(out.path) == {"input": "[?,3,16,16]"}
    feed = {"input": np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)}
    assert run_ir(out.path, feed).shape == (3, 10)


def test_compress_to_fp16_halves_the_weights(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx")
    feed = {"input": np.random.default_rng(2).random((1, 3, 16, 16), dtype=np.float32)}
    full = get_pass("convert_openvino")().run(fp32_artifact(model), make_ctx(tmp_path / "a"))
    half = get_pass("convert_openvino")(compress_to_fp16=True).run(fp32_artifact(model), make_ctx(tmp_path / "b"))
    assert half.precision == "fp16"
    assert half.extra_files[0].stat().st_size < 0.6 * full.extra_files[0].stat().st_size
    np.testing.assert_allclose(run_ir(half.path, feed), run_onnx(model, feed), atol=5e-3)


def test_unknown_input_name_is_named(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx", batch="N")
    with pytest.raises(ConversionError, match=r"input\(s\) image that cnn.onnx does not have; its inputs: input"):
        convert = get_pass("convert_openvino")(input_shapes={"image": [1, 3, 16, 16]})
        convert.run(fp32_artifact(model), make_ctx(tmp_path))


def test_wrong_rank_is_a_conversion_error(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx", batch="N")
    with pytest.raises(ConversionError, match=r"cannot reshape cnn.onnx to input=1x3x16"):
        get_pass("convert_openvino")(input_shapes={"input": [1, 3, 16]}).run(fp32_artifact(model), make_ctx(tmp_path))


@pytest.mark.parametrize(("config", "message"), [
    ({"input_shapes": {"input": ["1", 3]}}, r"input_shapes\['input'\] must be a list of positive ints"),
    ({"input_shapes": [1, 3, 16, 16]}, "input_shapes must map input names"),
    ({"compress": True}, "unknown option.*compress"),
])
def test_bad_config_is_a_config_error(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_pass("convert_openvino")(**config)


def test_real_classifier_converts_and_matches_onnxruntime(tmp_path: Path) -> None:
    model = real_model("ppocr-cls")
    feed = {"x": np.random.default_rng(3).random((1, 3, 48, 192), dtype=np.float32)}
    out = get_pass("convert_openvino")(input_shapes={"x": [1, 3, 48, 192]}).run(
        fp32_artifact(model), make_ctx(tmp_path, "intel-npu"))
    assert input_shapes(out.path) == {"x": "[1,3,48,192]"}
    np.testing.assert_allclose(run_ir(out.path, feed), run_onnx(model, feed), atol=1e-4)
