"""Any input signature: several inputs of any dtype, scalars, recurrent state, dynamic dims resolved from
the data, then --input-shape, then the model's metadata, and one error for what is left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeml
from edgeml.bundle import TrustStore, verify_bundle
from edgeml.bundle.manifest import TensorSpec
from edgeml.compiler.data import load_samples
from edgeml.compiler.signature import resolve
from edgeml.errors import ConfigError
from edgeml.runtimes import open_model
from tests.compiler.conftest import FAST
from tests.support.tiny_signatures import tiny_detector, tiny_encoder, tiny_stateful

STATEFUL_SPECS = [TensorSpec("audio", "float32", ("audio_dim0", "audio_dim1")),
                  TensorSpec("state", "float32", (2, "state_dim1", 128)), TensorSpec("sr", "int64", ())]


def _stateful_data(path: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, audio=rng.standard_normal((n, 1, 512)).astype(np.float32),
             state=rng.standard_normal((n, 2, 1, 128)).astype(np.float32) * 0.1,
             sr=np.full((n,), 16000, np.int64))  # a scalar input: one value per sample
    return path


def _text_data(path: Path, n: int = 12, seq: int = 8) -> Path:
    rng = np.random.default_rng(0)
    mask = np.ones((n, seq), bool)
    mask[:, seq - 2:] = False  # padded tail
    np.savez(path, input_ids=rng.integers(1, 64, (n, seq)).astype(np.int64), attention_mask=mask)
    return path


def test_scalar_inputs_load_from_npz_as_shape_empty_and_stack(tmp_path: Path) -> None:
    samples = load_samples(_stateful_data(tmp_path / "s.npz"), STATEFUL_SPECS)
    feed = samples[0]
    assert feed["sr"].shape == () and feed["sr"] == 16000 and feed["audio"].shape == (1, 512)
    assert samples.stacked()["sr"].shape == (8,)  # scalars stack into a vector, they cannot concatenate
    from_iterable = load_samples([{"audio": np.zeros((1, 4), np.float32), "state": np.zeros((2, 1, 128), np.float32),
                                   "sr": np.int64(8000)}], STATEFUL_SPECS)
    assert from_iterable[0]["sr"].shape == ()


def test_dims_come_from_data_then_flags_then_metadata() -> None:
    specs = [TensorSpec("images", "float32", ("batch", 3, "height", "width"))]
    feeds = [{"images": np.zeros((1, 3, 32, 48), np.float32)}]
    sig = resolve(specs, samples=feeds, input_shapes={"images": [1, 3, 32, 48]}, metadata={"imgsz": "[96, 96]"})
    assert sig.dims == {"batch": 1, "height": 32, "width": 48} and sig.origin["height"] == "the sample data"
    sig = resolve(specs, input_shapes={"images": [1, 3, 64, 80]}, metadata={"imgsz": "[96, 96]"})
    assert (sig.dims["height"], sig.dims["width"], sig.origin["width"]) == (64, 80, "--input-shape")
    sig = resolve(specs, metadata={"imgsz": "[96, 128]"})
    assert (sig.dims["height"], sig.dims["width"]) == (96, 128) and sig.origin["batch"] == "a batch dimension"
    with pytest.raises(ConfigError, match="sets dimension 'height' to 64, but the sample data has 32"):
        resolve(specs, samples=feeds, input_shapes={"images": [1, 3, 64, 48]})


def test_samples_of_different_sizes_cannot_become_one_static_shape() -> None:
    specs = [TensorSpec("input_ids", "int64", ("batch", "sequence"))]
    sig = resolve(specs, samples=[{"input_ids": np.zeros((1, n), np.int64)} for n in (5, 9)])
    assert sig.varying == {"sequence": [5, 9]}
    with pytest.raises(ConfigError, match=r"different sizes for dynamic dimension\(s\) 'sequence': 5, 9"):
        sig.static_input_shapes()


def test_unresolved_dims_stop_the_build_with_one_error_and_a_flag_that_works(tmp_path: Path, default_key) -> None:
    det = tiny_detector(tmp_path / "det.onnx")
    with pytest.raises(ConfigError) as err:
        edgeml.compile(det, "x86-cpu", precision="fp32", output=tmp_path / "x.edgepkg", **FAST)
    message = str(err.value)
    # both dims in one message; the example was run once (filling 1 breaks the detector's Concat)
    assert "'height' (images[2])" in message and "'width' (images[3])" in message and "batch" not in message
    assert "--input-shape images=1x3x640x640 (the model runs with these)" in message
    with pytest.raises(ConfigError, match=r"--input-shape images=1x3x640x640 \(the model runs"):
        edgeml.compile(det, "intel-npu", precision="fp32", output=tmp_path / "x.edgepkg", **FAST)
    stateful = tiny_stateful(tmp_path / "st.onnx")
    with pytest.raises(ConfigError) as err:
        edgeml.compile(stateful, "jetson-orin", precision="fp32", output=tmp_path / "x.edgepkg", **FAST)
    assert "'audio_dim1' (audio[1])" in str(err.value) and "'state_dim1' (state[1])" in str(err.value)
    assert "--input-shape audio=1x512 --input-shape state=2x512x128" in str(err.value) or \
        "(the model runs with these)" in str(err.value)


def test_detector_builds_from_data_and_static_targets_bake_the_data_shape(tmp_path: Path, default_key) -> None:
    det = tiny_detector(tmp_path / "det.onnx")
    data = tmp_path / "photos.npz"
    np.savez(data, images=np.random.default_rng(0).random((8, 3, 64, 64), dtype=np.float32))
    x86 = edgeml.compile(det, "x86-cpu", precision="fp32", runtime="onnxruntime", calibration=data,
                         output=tmp_path / "x86.edgepkg", **FAST)
    x86_inputs = verify_bundle(x86.bundle_path, TrustStore.default()).manifest.inputs
    assert x86_inputs[0].shape == ("batch", 3, "height", "width")
    assert x86.report.data["dimensions"]["height"] == {"value": 64, "from": "the sample data"}
    npu = edgeml.compile(det, "intel-npu", precision="fp32", calibration=data, output=tmp_path / "npu.edgepkg", **FAST)
    m = verify_bundle(npu.bundle_path, TrustStore.default()).manifest
    assert m.runtime == "openvino" and m.inputs[0].shape == (1, 3, 64, 64)


def test_detector_imgsz_metadata_is_enough_without_data(tmp_path: Path, default_key) -> None:
    det = tiny_detector(tmp_path / "det.onnx", imgsz=(32, 64))
    result = edgeml.compile(det, "intel-npu", precision="fp32", output=tmp_path / "npu.edgepkg", **FAST)
    m = verify_bundle(result.bundle_path, TrustStore.default()).manifest
    assert m.inputs[0].shape == (1, 3, 32, 64)
    assert result.report.data["dimensions"]["width"]["from"] == "the model's metadata (imgsz)"


@pytest.mark.parametrize("target", ["x86-cpu", "arm64-cpu"])
def test_stateful_model_builds_from_npz_with_a_scalar_input(tmp_path: Path, default_key, target: str) -> None:
    model = tiny_stateful(tmp_path / "st.onnx")
    result = edgeml.compile(model, target, precision="fp32", runtime="onnxruntime",
                            calibration=_stateful_data(tmp_path / "cal.npz"), output=tmp_path / "st.edgepkg", **FAST)
    m = verify_bundle(result.bundle_path, TrustStore.default()).manifest
    assert [(s.name, s.dtype, len(s.shape)) for s in m.inputs] == [("audio", "float32", 2), ("state", "float32", 3),
                                                                   ("sr", "int64", 0)]
    assert {o.name for o in m.outputs} == {"prob", "next_state"}
    assert m.raw["reference_stats"]["inputs"]["sr"]["count"] == 6   # 8 samples, 2 held out for the gate
    with open_model(_model_file(result.bundle_path, tmp_path), "onnxruntime") as b:
        out = b.run({"audio": np.zeros((1, 512), np.float32), "state": np.zeros((2, 1, 128), np.float32),
                     "sr": np.array(16000, np.int64)})
    assert out["next_state"].shape == (2, 1, 128)


def _model_file(bundle: Path, tmp_path: Path) -> Path:
    from edgeml.bundle import unpack_bundle

    return unpack_bundle(bundle, tmp_path / "unpacked", TrustStore.default()).model_path


def test_input_shape_flags_for_several_inputs_with_a_scalar_build_without_data(tmp_path: Path, default_key) -> None:
    model = tiny_stateful(tmp_path / "st.onnx")
    result = edgeml.compile(model, "jetson-orin", precision="fp32",
                            input_shapes={"audio": [1, 256], "state": [2, 1, 128]},
                            output=tmp_path / "st.edgepkg", **FAST)
    m = verify_bundle(result.bundle_path, TrustStore.default()).manifest
    assert [s.shape for s in m.inputs] == [(1, 256), (2, 1, 128), ()]


@pytest.mark.parametrize("target", ["x86-cpu", "arm64-cpu", "jetson-orin"])
def test_text_model_with_int64_ids_and_bool_mask_builds_from_npz(tmp_path: Path, default_key, target: str) -> None:
    model = tiny_encoder(tmp_path / "enc.onnx")
    result = edgeml.compile(model, target, precision="fp32", runtime="onnxruntime",
                            calibration=_text_data(tmp_path / "text.npz"), output=tmp_path / "enc.edgepkg", **FAST)
    m = verify_bundle(result.bundle_path, TrustStore.default()).manifest
    assert [(s.name, s.dtype) for s in m.inputs] == [("input_ids", "int64"), ("attention_mask", "bool")]
    want = (1, 8) if target == "jetson-orin" else ("batch", "sequence")  # static targets bake the data's shape
    assert m.inputs[0].shape == want
    # an embedding is judged by cosine/SNR, not by an arg-max over its 32 features
    fid = m.raw["fidelity"]["outputs"]["sentence_embedding"]
    assert fid["agreement"] is None and fid["cosine"] > 0.999


def test_real_silero_vad_builds_on_x86_and_openvino_drops_out_with_its_reason(tmp_path: Path, default_key) -> None:
    """The issue's streaming speech model (PyPI wheel silero-vad): OpenVINO cannot convert its If branches;
    auto must build with ONNX Runtime and say why OpenVINO is out; the scalar sr comes from the .npz."""
    from tests.support.real_models import real_model

    data = tmp_path / "speech.npz"
    rng = np.random.default_rng(0)
    np.savez(data, input=(rng.standard_normal((8, 1, 512)) * 0.1).astype(np.float32),
             state=np.zeros((8, 2, 1, 128), np.float32), sr=np.full((8,), 16000, np.int64))
    result = edgeml.compile(real_model("silero-vad"), "x86-cpu", precision="fp32", calibration=data,
                            output=tmp_path / "vad.edgepkg", **FAST)
    by_label = {c.label: c for c in result.report.candidates}
    assert by_label["onnxruntime/fp32"].status == "passed"
    assert by_label["openvino/fp32"].status == "skipped"
    assert "OpenVINO cannot read the model" in by_label["openvino/fp32"].reason
    assert any(n.startswith("openvino dropped out") for n in result.report.notes)
    m = verify_bundle(result.bundle_path, TrustStore.default()).manifest
    assert [s.shape for s in m.inputs][2] == ()
