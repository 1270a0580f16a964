"""quantize_ort: static INT8 QDQ through onnxruntime, on tiny generated models and a real PP-OCR model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgeml.bundle import sha256_file
from edgeml.compiler.passes.base import Artifact, BuildContext, get_pass
from edgeml.errors import ConfigError, QuantizationError
from edgeml.targets import get_target
from tests.support.real_models import real_model
from tests.support.tiny_models import tiny_cnn


def fp32_artifact(path: Path) -> Artifact:
    return Artifact(path=path, format="onnx", precision="fp32", digest=sha256_file(path))


def samples(n: int, name: str = "input", shape: tuple[int, ...] = (1, 3, 16, 16), seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{name: rng.random(shape, dtype=np.float32)} for _ in range(n)]


def make_ctx(tmp_path: Path, calibration, target: str = "x86-cpu", log=None) -> BuildContext:
    return BuildContext(target=get_target(target), workdir=tmp_path / "work", calibration=calibration,
                        log=log or (lambda m: None))


def run_model(path: Path, feed: dict) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def dequantized_inputs(model: onnx.ModelProto, node_name: str) -> list[bool]:
    """For each input of ``node_name``: is it produced by a DequantizeLinear?"""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return [i in producers and producers[i].op_type == "DequantizeLinear" for i in node.input]


@pytest.fixture
def cnn(tmp_path: Path) -> Path:
    return tiny_cnn(tmp_path / "cnn.onnx")


def test_quantizes_tiny_cnn_to_qdq_close_to_fp32(tmp_path: Path, cnn: Path) -> None:
    cal = samples(20)
    progress: list[tuple[str, int, int]] = []
    ctx = make_ctx(tmp_path, cal)
    ctx.progress = lambda label, done, total: progress.append((label, done, total))

    out = get_pass("quantize_ort")(max_samples=12).run(fp32_artifact(cnn), ctx)

    model = onnx.load(str(out.path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    assert all(dequantized_inputs(model, "conv1")[:2]) and all(dequantized_inputs(model, "conv2")[:2])
    assert out.precision == "int8" and out.format == "onnx" and out.runtime == "onnxruntime"
    assert out.path.parent == ctx.workdir and out.digest == sha256_file(out.path)
    assert out.metadata["calibration_samples"] == 12 and out.metadata["calibration_method"] == "minmax"
    assert out.metadata["preprocess"] == "applied"
    assert progress[-1] == ("calibrating", 12, 12)
    for feed in cal[:4]:
        assert cosine(run_model(cnn, feed), run_model(out.path, feed)) > 0.99


def test_per_channel_gives_one_weight_scale_per_output_channel(tmp_path: Path, cnn: Path) -> None:
    out = get_pass("quantize_ort")(per_channel=True).run(fp32_artifact(cnn), make_ctx(tmp_path, samples(8)))

    model = onnx.load(str(out.path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    weight_dq = producers[conv2.input[1]]
    scale = inits[weight_dq.input[1]]
    assert scale.shape == (16,)            # conv2 has 16 output channels
    assert len(np.unique(scale)) > 1
    assert out.metadata["per_channel"] is True


def cnn_with_constant_weights(path: Path, opset: int) -> Path:
    """tiny_cnn with every initializer turned into a Constant node, as paddle2onnx exports PP-OCR."""
    from onnx import helper

    model = onnx.load(str(tiny_cnn(path, opset=opset)))
    constants = [helper.make_node("Constant", [], [i.name], value=i) for i in model.graph.initializer]
    nodes = [*constants, *model.graph.node]
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return path


def test_weights_stored_as_constant_nodes_are_quantized_as_weights(tmp_path: Path) -> None:
    """Without moving them to initializers they would be calibrated like activations, per tensor, in uint8."""
    model = cnn_with_constant_weights(tmp_path / "cnn.onnx", opset=12)
    cal = samples(8)

    out = get_pass("quantize_ort")(per_channel=True).run(fp32_artifact(model), make_ctx(tmp_path, cal))

    quantized = onnx.load(str(out.path))
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    producers = {o: n for n in quantized.graph.node for o in n.output}
    weight_dq = producers[next(n for n in quantized.graph.node if n.name == "conv2").input[1]]
    assert inits[weight_dq.input[0]].dtype == np.int8         # int8 weights folded at build time
    assert inits[weight_dq.input[1]].shape == (16,)           # one scale per output channel
    assert out.metadata["constants_moved_to_initializers"] == 6
    assert out.metadata["opset_upgraded_to"] == 13            # per-channel DequantizeLinear needs opset 13
    assert not any(n.op_type == "Constant" for n in quantized.graph.node)
    assert cosine(run_model(model, cal[0]), run_model(out.path, cal[0])) > 0.99
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["cnn.int8.onnx"]


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(tmp_path: Path, cnn: Path, method: str) -> None:
    cal = samples(6)
    out = get_pass("quantize_ort")(calibration_method=method).run(fp32_artifact(cnn), make_ctx(tmp_path, cal))
    assert out.metadata["calibration_method"] == method
    assert cosine(run_model(cnn, cal[0]), run_model(out.path, cal[0])) > 0.95


def test_excluded_nodes_and_op_types_stay_float(tmp_path: Path, cnn: Path) -> None:
    out = get_pass("quantize_ort")(exclude_nodes=["conv2"], exclude_op_types=["Gemm"]).run(
        fp32_artifact(cnn), make_ctx(tmp_path, samples(8)))

    model = onnx.load(str(out.path))
    assert not any(dequantized_inputs(model, "conv2")[1:])   # weight and bias of conv2 stay float
    assert not any(dequantized_inputs(model, "fc")[1:])
    assert dequantized_inputs(model, "conv1")[1]              # conv1 still quantized
    assert out.precision == "mixed"
    assert out.metadata["excluded_nodes"] == ["conv2"] and out.metadata["excluded_op_types"] == ["Gemm"]


def test_real_model_degrades_gracefully_when_preprocessing_fails(tmp_path: Path) -> None:
    """PP-OCR's classifier breaks quant_pre_process's symbolic shape inference: quantize without it."""
    model = real_model("ppocr-cls")
    cal = samples(4, name="x", shape=(1, 3, 48, 192))
    logs: list[str] = []

    out = get_pass("quantize_ort")().run(fp32_artifact(model), make_ctx(tmp_path, cal, log=logs.append))

    assert out.metadata["preprocess"].startswith("skipped: ")
    assert any("skipped quant_pre_process" in line for line in logs)
    assert not (tmp_path / "work" / f"{model.stem}.preprocessed.onnx").exists()
    ops = [n.op_type for n in onnx.load(str(out.path)).graph.node]
    assert ops.count("QuantizeLinear") > 20
    assert cosine(run_model(model, cal[0]), run_model(out.path, cal[0])) > 0.98


@pytest.mark.slow
def test_real_detector_quantizes_without_preprocessing(tmp_path: Path) -> None:
    model = real_model("ppocr-det")
    cal = samples(2, name="x", shape=(1, 3, 96, 96))
    out = get_pass("quantize_ort")().run(fp32_artifact(model), make_ctx(tmp_path, cal))
    assert "Incomplete symbolic shape inference" in out.metadata["preprocess"]
    result = run_model(out.path, cal[0])
    assert result.shape == (1, 1, 96, 96) and np.isfinite(result).all()


def test_without_calibration_data_the_error_says_how_to_give_it(tmp_path: Path, cnn: Path) -> None:
    with pytest.raises(QuantizationError, match=r"--calibration.*npz"):
        get_pass("quantize_ort")().run(fp32_artifact(cnn), make_ctx(tmp_path, None))
    with pytest.raises(QuantizationError, match=r"no samples"):
        get_pass("quantize_ort")().run(fp32_artifact(cnn), make_ctx(tmp_path, []))


def test_calibration_feeds_that_miss_an_input_name_it(tmp_path: Path, cnn: Path) -> None:
    with pytest.raises(QuantizationError, match=r"lacks model input.*input.*it has: image"):
        get_pass("quantize_ort")().run(fp32_artifact(cnn), make_ctx(tmp_path, samples(3, name="image")))


@pytest.mark.parametrize(("config", "message"), [
    ({"per_chanel": True}, "unknown option.*per_chanel"),
    ({"calibration_method": "kl"}, "calibration_method must be one of"),
    ({"max_samples": 0}, "max_samples must be >= 1"),
    ({"per_channel": "yes"}, "per_channel' must be bool"),
    ({"exclude_nodes": "conv1"}, "exclude_nodes' must be list"),
])
def test_bad_config_is_a_config_error(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_pass("quantize_ort")(**config)


def test_excluding_a_node_that_does_not_exist_is_an_error(tmp_path: Path, cnn: Path) -> None:
    with pytest.raises(ConfigError, match=r"not in cnn.onnx: conv9"):
        get_pass("quantize_ort")(exclude_nodes=["conv9"]).run(fp32_artifact(cnn), make_ctx(tmp_path, samples(2)))
