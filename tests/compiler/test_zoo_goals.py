"""The model zoo's first goal, on the cheapest real models of three families (scripts/bench_models.py runs
the whole zoo): every model builds for x86-cpu, arm64-cpu, intel-npu (static shapes) and jetson-orin with at
most calibration data as input, or stops with one clear error that names the flag to add.

- PP-OCRv4 det: an image input with dynamic batch, height and width;
- silero-vad: audio frames, a recurrent state and a scalar int64 sample rate, all with dynamic dims;
- paraphrase-MiniLM-L3: a transformer with two int64 inputs and a dynamic sequence length.

Without data each stops before any heavy work with one ConfigError naming ``--input-shape`` and an example
that the model really runs with (checked here on ONNX Runtime, independently of the compiler). With a few
calibration samples, their shapes fix every dimension. Full builds are kept to FP32, one runtime, tiny inputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import edgeml
from edgeml.bundle.manifest import TensorSpec
from edgeml.cli import parse_input_shape
from edgeml.compiler.signature import resolve
from edgeml.errors import ConfigError, ModelCheckError
from edgeml.inference import open_bundle
from tests.compiler.conftest import FAST
from tests.support.real_models import real_model

TARGETS = ("x86-cpu", "arm64-cpu", "intel-npu", "jetson-orin")
ONE_RUNTIME = {"x86-cpu": "onnxruntime", "arm64-cpu": "onnxruntime", "intel-npu": "openvino",
               "jetson-orin": "onnxruntime"}
NO_DATA_CASES = [(m, t) for m in ("ppocr-det", "silero-vad") for t in TARGETS] + \
                [("minilm-l3", "x86-cpu"), ("minilm-l3", "intel-npu")]


def vad_samples(n: int = 4) -> dict[str, np.ndarray]:
    """silero-vad's own framing: 64 samples of context + 512 new ones at 16 kHz, the state, the rate."""
    rng = np.random.default_rng(0)
    return {"input": (0.1 * rng.standard_normal((n, 1, 576))).astype(np.float32),
            "state": np.zeros((n, 2, 1, 128), np.float32), "sr": np.full((n,), 16000, np.int64)}


def example_flags(message: str) -> dict[str, list[int]]:
    """The ``--input-shape`` flags of an error message, parsed the way the CLI parses them."""
    values = re.findall(r"--input-shape (\S+=[0-9x]+)", message)
    shapes = parse_input_shape(tuple(values))
    assert shapes, f"no --input-shape example in: {message}"
    return shapes


def runs_on_onnxruntime(model: Path, shapes: dict[str, list[int]]) -> None:
    """Zeros of the suggested shapes; a scalar integer input gets a small value, as the message says it
    was checked with (silero-vad's 16000 picks a branch that needs longer frames: see the caveat test)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        if i.type == "tensor(int64)":
            feed[i.name] = np.array(1, np.int64) if not i.shape else np.ones(shapes[i.name], np.int64)
        else:
            feed[i.name] = np.zeros(shapes[i.name], np.float32)
    session.run(None, feed)


@pytest.mark.parametrize(("key", "target"), NO_DATA_CASES)
def test_without_data_a_dynamic_model_stops_with_one_error_naming_input_shape_with_an_example_that_runs(
        default_key, tmp_path, key, target) -> None:
    model = real_model(key)
    with pytest.raises(ConfigError) as caught:
        edgeml.compile(model, target, precision="fp32", runtime=ONE_RUNTIME[target],
                       output=tmp_path / "b.edgepkg", **FAST)
    message = str(caught.value)
    assert "dynamic dimensions" in message and "--input-shape" in message, message
    assert "(the model runs with these)" in message, message
    assert not (tmp_path / "b.edgepkg").exists()
    runs_on_onnxruntime(model, example_flags(message))


def test_the_suggested_flags_alone_build_the_stateful_model(default_key, tmp_path) -> None:
    """The issue's traceback case: --input-shape for the audio and state inputs, the scalar left alone."""
    model = real_model("silero-vad")
    with pytest.raises(ConfigError) as caught:
        edgeml.compile(model, "x86-cpu", precision="fp32", runtime="onnxruntime", **FAST)
    shapes = example_flags(str(caught.value))
    assert set(shapes) == {"input", "state"}  # the scalar sample rate needs no flag
    # the check ran the model with a random small sample rate: the message says so
    assert "small random values for the scalar input(s) sr" in str(caught.value)
    result = edgeml.compile(model, "x86-cpu", precision="fp32", runtime="onnxruntime", input_shapes=shapes,
                            output=tmp_path / "vad.edgepkg", **FAST)
    dims = result.report.data["dimensions"]
    assert {d["from"] for d in dims.values()} == {"--input-shape"}


@pytest.mark.parametrize("target", TARGETS)
def test_with_calibration_data_only_the_stateful_model_builds_or_says_why_not(default_key, tmp_path, target) -> None:
    """Data alone fixes every dim. The two targets that cannot hold silero-vad say so in one check error:
    OpenVINO cannot read its If/LSTM graph, and with the static shapes jetson-orin needs ONNX Runtime
    cannot load it (regression: that used to surface per candidate as ONNX Runtime's bare LSTM error)."""
    out = tmp_path / "vad.edgepkg"
    build = lambda: edgeml.compile(real_model("silero-vad"), target, precision="fp32",  # noqa: E731
                                   runtime=ONE_RUNTIME[target], calibration=vad_samples(), output=out, **FAST)
    if target == "intel-npu":
        with pytest.raises(ModelCheckError, match="OpenVINO cannot read the model"):
            build()
        return
    if target == "jetson-orin":
        with pytest.raises(ModelCheckError, match=r"static input shapes target jetson-orin needs \(input 1x576, "
                                                  r"state 2x1x128, sr scalar\).*build for a target with dynamic"):
            build()
        return
    result = build()
    assert {d["from"] for d in result.report.data["dimensions"].values()} == {"the sample data"}
    assert result.report.chosen is not None and result.report.chosen.fidelity["cosine"] > 0.9999


@pytest.mark.parametrize("target", ["intel-npu", "jetson-orin"])
def test_with_calibration_data_only_the_detector_builds_static_for_static_targets(default_key, tmp_path,
                                                                                  target) -> None:
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 64)).astype(np.float32)
    result = edgeml.compile(real_model("ppocr-det"), target, precision="fp32", runtime=ONE_RUNTIME[target],
                            calibration=images, output=tmp_path / "det.edgepkg", **FAST)
    inputs = open_bundle(result.bundle_path).manifest.inputs
    assert [tuple(i.shape) for i in inputs] == [(1, 3, 32, 64)]  # the samples' shape, baked in


def test_an_ocr_recogniser_gets_a_text_line_example_that_runs() -> None:
    """Regression: both sides of PP-OCR rec's image input are dynamic but its height must be 48; the
    suggestion used to try only square sizes and offer 1x3x640x640, which the model cannot run."""
    model = real_model("ppocr-rec")
    specs = [TensorSpec("x", "float32", ("p2o.DynamicDimension.0", 3, "?", "p2o.DynamicDimension.1"))]
    with pytest.raises(ConfigError) as caught:
        resolve(specs, model=model)
    shapes = example_flags(str(caught.value))
    assert shapes == {"x": [1, 3, 48, 320]} and "(the model runs with these)" in str(caught.value)
    runs_on_onnxruntime(model, shapes)
