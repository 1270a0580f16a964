"""fp16: ONNX FP32 → FP16 that passes the ONNX checker and runs on ONNX Runtime's CPU provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from edgeml.bundle import sha256_file
from edgeml.compiler.passes.base import Artifact, BuildContext, get_pass
from edgeml.errors import ConfigError, QuantizationError
from edgeml.targets import get_target
from tests.support.real_models import real_model
from tests.support.tiny_models import tiny_cnn, tiny_mlp


def fp32_artifact(path: Path) -> Artifact:
    return Artifact(path=path, format="onnx", precision="fp32", digest=sha256_file(path))


def make_ctx(tmp_path: Path) -> BuildContext:
    return BuildContext(target=get_target("jetson-orin"), workdir=tmp_path / "work")


def run(path: Path, feed: dict) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def elem_type(value_info: onnx.ValueInfoProto) -> int:
    return value_info.type.tensor_type.elem_type


def test_tiny_cnn_becomes_fp16_with_float32_io(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx")
    feed = {"input": np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)}

    out = get_pass("fp16")().run(fp32_artifact(model), make_ctx(tmp_path))

    converted = onnx.load(str(out.path))
    onnx.checker.check_model(converted, full_check=True)
    float_inits = [i for i in converted.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert float_inits and all(i.data_type == TensorProto.FLOAT16 for i in float_inits)
    assert elem_type(converted.graph.input[0]) == TensorProto.FLOAT
    assert elem_type(converted.graph.output[0]) == TensorProto.FLOAT
    assert out.precision == "fp16" and out.digest == sha256_file(out.path)
    assert out.path.stat().st_size < 0.7 * model.stat().st_size
    np.testing.assert_allclose(run(out.path, feed), run(model, feed), atol=2e-3)


def test_keep_io_types_false_exposes_float16_io(tmp_path: Path) -> None:
    model = tiny_mlp(tmp_path / "mlp.onnx")
    out = get_pass("fp16")(keep_io_types=False).run(fp32_artifact(model), make_ctx(tmp_path))
    converted = onnx.load(str(out.path))
    assert elem_type(converted.graph.input[0]) == TensorProto.FLOAT16
    x = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    got = run(out.path, {"x": x.astype(np.float16)})
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), run(model, {"x": x}), atol=1e-2)


def test_blocked_nodes_stay_float32(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx")
    out = get_pass("fp16")(block_nodes=["fc"], block_op_types=["Softmax"]).run(fp32_artifact(model), make_ctx(tmp_path))
    converted = onnx.load(str(out.path))
    fc_weight = next(i for i in converted.graph.initializer if i.name == "wf")
    assert fc_weight.data_type == TensorProto.FLOAT
    assert out.metadata["kept_fp32"] == {"Gemm": 1, "Softmax": 1}


def test_graph_stays_topologically_sorted(tmp_path: Path) -> None:
    """The converter appends the IO casts at the end; the pass reorders so every consumer follows them."""
    model = tiny_cnn(tmp_path / "cnn.onnx")
    converted = onnx.load(str(get_pass("fp16")().run(fp32_artifact(model), make_ctx(tmp_path)).path))
    seen = {i.name for i in converted.graph.input} | {i.name for i in converted.graph.initializer}
    for node in converted.graph.node:
        assert all(i in seen for i in node.input if i), node.name
        seen.update(node.output)


def test_real_classifier_fp16_matches_fp32(tmp_path: Path) -> None:
    model = real_model("ppocr-cls")
    out = get_pass("fp16")().run(fp32_artifact(model), make_ctx(tmp_path))
    onnx.checker.check_model(str(out.path))
    rng = np.random.default_rng(2)
    for _ in range(2):
        feed = {"x": rng.random((1, 3, 48, 192), dtype=np.float32)}
        np.testing.assert_allclose(run(out.path, feed), run(model, feed), atol=5e-3)


def test_only_fp32_onnx_models_are_converted(tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "cnn.onnx")
    with pytest.raises(QuantizationError, match=r"converts FP32 models.*int8"):
        get_pass("fp16")().run(fp32_artifact(model).evolve(precision="int8"), make_ctx(tmp_path))
    with pytest.raises(QuantizationError, match=r"needs an ONNX model"):
        get_pass("fp16")().run(fp32_artifact(model).evolve(format="openvino"), make_ctx(tmp_path))


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown option.*keep_io"):
        get_pass("fp16")(keep_io=True)
