"""ONNX -> TFLite (fp32, fp16, full INT8) with onnx2tf in its isolated toolchain, on a generated CNN
and on a real pretrained model (PP-OCR's direction classifier from the rapidocr wheel). Each candidate
goes through the build's fidelity gate (LiteRT against the ONNX FP32 reference under ONNX Runtime)
and is then served by a real ``edgeml-agent``.

Tolerances against ONNX Runtime, stated: fp32 1e-4 absolute, fp16 1e-2, int8 the same arg-max on
every served sample and 0.1 absolute on probabilities. Conversions run with a dead HTTP(S) proxy in
the subprocess environment, so passing also proves they need no network (onnx2tf's sample file is
written locally).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeml.compiler import api
from edgeml.compiler.passes.convert_tflite import SAMPLE_FILE, runs_dir
from edgeml.runtimes import open_model
from tests.compiler.conftest import FAST
from tests.support.real_models import real_model
from tests.support.serve import serve_and_infer
from tests.support.tflite_data import text_line_inputs
from tests.support.toolchain import pinned_toolchains_dir, tflite_toolchain  # noqa: F401 (fixture)

pytestmark = pytest.mark.toolchain
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}


@pytest.fixture(autouse=True)
def _toolchain(tflite_toolchain, monkeypatch):  # noqa: F811
    pinned_toolchains_dir(monkeypatch, tflite_toolchain)


def _build_all(model, data, tmp_path, prefix, **gate):
    """int8 first: its onnx2tf run also yields the fp32 and fp16 models, which then reuse it."""
    bundles = {}
    before = set(runs_dir().glob("onnx2tf-*"))
    for precision in ("int8", "fp32", "fp16"):
        name = f"{prefix}-{precision}"
        result = api.compile(model, "arm64-cpu", precision=precision, runtime="litert", calibration=data,
                             name=name, output=tmp_path / f"{name}.edgepkg", **gate, **FAST)
        chosen = result.report.chosen
        assert chosen is not None and chosen.runtime == "litert" and chosen.precision == precision
        assert chosen.fidelity["passed"], chosen.fidelity
        assert any(s["name"] == "convert_tflite" for s in chosen.steps)
        bundles[name] = result.bundle_path
    runs = sorted(p for p in set(runs_dir().glob("onnx2tf-*")) - before if (p / "out").is_dir())
    assert len(runs) == 1, runs  # one TensorFlow run served all three precisions
    assert (runs[0] / SAMPLE_FILE).exists()
    return bundles


def _check_served(model, served, feed, prefix):
    with open_model(model, "onnxruntime") as ref:
        expected = ref.run(feed)
    for precision, tol in TOLERANCE.items():
        got = served[f"{prefix}-{precision}"]
        assert set(got) == set(expected)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, atol=tol, err_msg=f"{precision} {name}")
            if precision == "int8":
                np.testing.assert_array_equal(got[name].argmax(-1), value.argmax(-1))


def test_tiny_cnn_converts_to_fp32_fp16_int8_passes_the_gate_and_is_served(tmp_path, default_key, cnn, cnn_data):
    bundles = _build_all(cnn, cnn_data, tmp_path, "cnn")
    feed = {"input": np.load(cnn_data)["input"][:1]}
    served = serve_and_infer(tmp_path, default_key, bundles, {name: feed for name in bundles})
    _check_served(cnn, served, feed, "cnn")

    # --precision auto on arm64-cpu weighs ONNX Runtime and LiteRT candidates and says why
    result = api.compile(cnn, "arm64-cpu", precision="auto", calibration=cnn_data,
                         output=tmp_path / "auto.edgepkg", **FAST)
    labels = {c.label: c.status for c in result.report.candidates}
    assert {"litert/fp32", "litert/fp16", "litert/int8", "onnxruntime/fp32"} <= set(labels)
    assert labels["litert/fp32"] == "passed" and labels["litert/int8"] == "passed"
    chosen = result.report.chosen
    assert chosen is not None and chosen.status == "passed"
    assert result.report.why.startswith(f"{chosen.label} is the fastest candidate that passed the fidelity gate")
    assert "litert/" in result.report.why


@pytest.mark.slow
def test_ppocr_classifier_converts_passes_the_gate_and_is_served(tmp_path, default_key):
    model = real_model("ppocr-cls")
    data = {"x": text_line_inputs(24)}
    bundles = _build_all(model, data, tmp_path, "ppocr")
    feed = {"x": text_line_inputs(25)[24:]}  # a crop the calibration did not see
    served = serve_and_infer(tmp_path, default_key, bundles, {name: feed for name in bundles})
    _check_served(model, served, feed, "ppocr")


def _conv_feature_map(path):
    """Conv -> Relu, output 'feat' [1, 4, 8, 6]: a 4-D output onnx2tf would leave channels-last."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["img", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["feat"], name="relu")]
    graph = helper.make_graph(nodes, "fm", [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 8, 6])],
                              [helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 4, 8, 6])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_channels_last_outputs_are_transposed_back_to_the_onnx_layout(tmp_path):
    from edgeml.compiler.modelinfo import digest_files
    from edgeml.compiler.passes.base import Artifact, BuildContext
    from edgeml.compiler.passes.convert_tflite import ConvertTflite
    from edgeml.compiler.tflite_io import is_identity
    from edgeml.targets import get_target

    model = _conv_feature_map(tmp_path / "fm.onnx")
    ctx = BuildContext(target=get_target("arm64-cpu"), workdir=tmp_path / "w")
    art = ConvertTflite(precision="fp32").run(Artifact(model, "onnx", "fp32", digest_files([model])), ctx)
    assert art.metadata["transposed_outputs"] == ["feat"]
    assert is_identity(art.metadata["tflite_io"])
    feed = {"img": np.random.default_rng(0).normal(size=(1, 3, 8, 6)).astype(np.float32)}
    with open_model(model, "onnxruntime") as ref, open_model(art.path, "litert") as cand:
        assert [(s.name, s.shape) for s in cand.outputs] == [("feat", (1, 4, 8, 6))]
        np.testing.assert_allclose(cand.run(feed)["feat"], ref.run(feed)["feat"], atol=1e-4)
