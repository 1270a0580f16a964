"""Each backend on this CPU: generated models and real ones (PP-OCR ONNX, MediaPipe .tflite)."""

from __future__ import annotations

import builtins
import importlib.abc
import sys

import numpy as np
import pytest

from edgeml.errors import InferenceInputError, MissingExtraError, RuntimeBackendError
from edgeml.runtimes import BackendOptions, open_model
from edgeml.runtimes.litert_backend import import_interpreter
from tests.support.bundles import sample_inputs
from tests.support.real_models import real_model
from tests.support.tiny_models import tiny_cnn, tiny_mlp


def _reference_mlp(x: np.ndarray) -> np.ndarray:
    """The tiny MLP computed with numpy from the same seeded weights."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (4, 8)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (8,)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (8, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (3,)).astype(np.float32)
    return np.maximum(x @ w1 + b1, 0) @ w2 + b2


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_generated_mlp_matches_numpy(tmp_path, runtime):
    x = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    with open_model(tiny_mlp(tmp_path / "m.onnx"), runtime, BackendOptions(num_threads=1)) as backend:
        assert [s.name for s in backend.inputs] == ["x"] and backend.inputs[0].shape[1] == 4
        y = backend.run(backend.check_feeds({"x": x}))["y"]
    np.testing.assert_allclose(y, _reference_mlp(x), rtol=1e-5, atol=1e-5)


def test_onnxruntime_and_openvino_agree_on_a_cnn(tmp_path):
    model = tiny_cnn(tmp_path / "cnn.onnx", batch="N")
    x = np.random.default_rng(2).random((3, 3, 16, 16), dtype=np.float32)
    with open_model(model, "onnxruntime") as ort, open_model(model, "openvino", BackendOptions(device="CPU")) as ov:
        a, b = ort.run({"input": x})["probs"], ov.run({"input": x})["probs"]
        assert ort.device == "CPUExecutionProvider" and ov.device == "CPU"
    assert a.shape == (3, 10)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)


def test_openvino_runs_saved_ir(tmp_path):
    import openvino as ov

    onnx_path = tiny_cnn(tmp_path / "cnn.onnx")
    ov.save_model(ov.convert_model(str(onnx_path)), str(tmp_path / "cnn.xml"), compress_to_fp16=False)
    x = np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)
    with open_model(tmp_path / "cnn.xml", "openvino") as ir, open_model(onnx_path, "onnxruntime") as ref:
        np.testing.assert_allclose(ir.run({"input": x})["probs"], ref.run({"input": x})["probs"], rtol=1e-4, atol=1e-5)


def test_onnxruntime_threads_come_from_options(tmp_path):
    with open_model(tiny_mlp(tmp_path / "m.onnx"), "onnxruntime", BackendOptions(num_threads=1)) as backend:
        assert backend.session.get_session_options().intra_op_num_threads == 1  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_real_ppocr_classifier(runtime):
    """PP-OCR's text-direction classifier: [N,3,48,192] → 2 class probabilities per image."""
    x = np.random.default_rng(4).random((2, 3, 48, 192), dtype=np.float32)
    with open_model(real_model("ppocr-cls"), runtime) as backend:
        out = next(iter(backend.run(backend.check_feeds({"x": x})).values()))
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("key", "outputs"), [
    ("face-detection", {"regressors": (1, 896, 16), "classificators": (1, 896, 1)}),
    ("selfie-segmentation", {"activation_10": (1, 256, 256, 1)}),
])
def test_real_mediapipe_tflite(key, outputs):
    with open_model(real_model(key), "litert", BackendOptions(num_threads=1)) as backend:
        feeds = sample_inputs(backend.inputs, seed=5)
        first = backend.run(backend.check_feeds(feeds))
        again = backend.run(backend.check_feeds(feeds))
    assert {n: a.shape for n, a in first.items()} == outputs
    for name in outputs:
        assert np.isfinite(first[name]).all()
        np.testing.assert_array_equal(first[name], again[name])   # deterministic, outputs copied out
    if key == "selfie-segmentation":
        mask = first["activation_10"]
        assert mask.min() >= 0.0 and mask.max() <= 1.0             # a sigmoid mask


def test_check_feeds_names_the_problem(tmp_path):
    with open_model(tiny_mlp(tmp_path / "m.onnx"), "onnxruntime") as backend:
        with pytest.raises(InferenceInputError, match=r"missing input.*x"):
            backend.check_feeds({})
        with pytest.raises(InferenceInputError, match=r"unknown input.*z"):
            backend.check_feeds({"x": np.zeros((1, 4), np.float32), "z": np.zeros(1)})
        with pytest.raises(InferenceInputError, match=r"shape \[1, 5\]"):
            backend.check_feeds({"x": np.zeros((1, 5), np.float32)})
        with pytest.raises(InferenceInputError, match="dtype <U1"):
            backend.check_feeds({"x": np.array([["a", "b", "c", "d"]])})
        cast = backend.check_feeds({"x": np.zeros((2, 4), np.float64)})["x"]
        assert cast.dtype == np.float32


def test_unloadable_model_is_a_backend_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    for runtime in ("onnxruntime", "openvino"):
        with pytest.raises(RuntimeBackendError, match=r"bad\.onnx"):
            open_model(bad, runtime)
    with pytest.raises(RuntimeBackendError, match="unknown runtime 'tensorflow'"):
        open_model(bad, "tensorflow")


class _BrokenTfliteRuntime(importlib.abc.MetaPathFinder):
    """Behaves like tflite-runtime 2.14 under numpy 2: importing its interpreter raises AttributeError."""

    def find_spec(self, name, path=None, target=None):
        if name == "tflite_runtime" or name.startswith("tflite_runtime."):
            raise AttributeError("_ARRAY_API not found")
        return None


def test_litert_falls_back_to_tflite_runtime_and_explains_numpy(monkeypatch):
    real_import = builtins.__import__

    def no_litert(name, *args, **kwargs):
        if name.startswith("ai_edge_litert"):
            raise ImportError("No module named 'ai_edge_litert'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_litert)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTfliteRuntime(), *sys.meta_path])
    with pytest.raises(RuntimeBackendError, match="needs numpy<2"):
        import_interpreter()
    monkeypatch.setattr(sys, "meta_path", [m for m in sys.meta_path if not isinstance(m, _BrokenTfliteRuntime)])
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)   # not installed at all
    with pytest.raises(MissingExtraError, match=r"edgeml\[litert\]"):
        import_interpreter()
