"""quantize_nncf: NNCF post-training INT8 quantization of OpenVINO IR, run on OpenVINO's CPU plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeml.bundle import sha256_file
from edgeml.compiler.modelinfo import digest_files
from edgeml.compiler.passes.base import Artifact, BuildContext, get_pass
from edgeml.errors import ConfigError, QuantizationError
from edgeml.runtimes.openvino_backend import import_openvino
from edgeml.targets import get_target
from tests.support.real_models import real_model
from tests.support.tiny_models import tiny_cnn

REPO = Path(__file__).resolve().parents[2]


def samples(n: int, name: str = "input", shape: tuple[int, ...] = (1, 3, 16, 16), seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{name: rng.random(shape, dtype=np.float32)} for _ in range(n)]


def text_crops(n: int) -> list[dict]:
    """Crops of scikit-image's 'text' photo, prepared as PP-OCR's direction classifier expects."""
    from skimage import data, transform

    page = data.text().astype(np.float32) / 255.0              # 172 x 448 grayscale photo of text
    feeds = []
    for i in range(n):
        top, left = (i * 37) % 100, (i * 53) % 200
        crop = transform.resize(page[top:top + 60, left:left + 240], (48, 192), anti_aliasing=True)
        rgb = np.repeat(((crop - 0.5) / 0.5)[None], 3, axis=0).astype(np.float32)
        feeds.append({"x": rgb[None]})
    return feeds


def make_ctx(tmp_path: Path, calibration, target: str = "x86-cpu") -> BuildContext:
    return BuildContext(target=get_target(target), workdir=tmp_path / "work", calibration=calibration)


def ir_of(onnx_path: Path, tmp_path: Path, shapes: dict | None = None) -> Artifact:
    art = Artifact(path=onnx_path, format="onnx", precision="fp32", digest=sha256_file(onnx_path))
    return get_pass("convert_openvino")(input_shapes=shapes).run(art, make_ctx(tmp_path / "ir", None))


def op_types(xml: Path) -> list[str]:
    return [op.get_type_name() for op in import_openvino().Core().read_model(str(xml)).get_ops()]


def int8_constants(xml: Path) -> int:
    model = import_openvino().Core().read_model(str(xml))
    return sum(1 for op in model.get_ops() if op.get_type_name() == "Constant"
               and op.get_output_element_type(0).get_type_name() in ("i8", "u8"))


def run_ir(xml: Path, feed: dict) -> np.ndarray:
    compiled = import_openvino().Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(feed)[compiled.outputs[0]])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def cnn_ir(tmp_path: Path) -> Artifact:
    return ir_of(tiny_cnn(tmp_path / "cnn.onnx"), tmp_path)


def test_quantizes_ir_to_int8_close_to_fp32(tmp_path: Path, cnn_ir: Artifact) -> None:
    cal = samples(16)
    out = get_pass("quantize_nncf")(subset_size=10).run(cnn_ir, make_ctx(tmp_path, cal))

    assert out.format == "openvino" and out.runtime == "openvino" and out.precision == "int8"
    assert out.extra_files == (out.path.with_suffix(".bin"),)
    assert out.digest == digest_files([out.path, *out.extra_files])
    assert "FakeQuantize" in op_types(out.path)
    assert int8_constants(out.path) >= 2                   # both convolutions' weights stored as int8
    assert out.metadata["calibration_samples"] == 10 and out.metadata["target_device"] == "CPU"
    assert out.metadata["fake_quantize_nodes"] >= 2
    for feed in cal[:4]:
        assert cosine(run_ir(cnn_ir.path, feed), run_ir(out.path, feed)) > 0.98


def test_ignored_names_keep_a_layer_in_float(tmp_path: Path, cnn_ir: Artifact) -> None:
    cal = samples(8)
    full = get_pass("quantize_nncf")().run(cnn_ir, make_ctx(tmp_path / "a", cal))
    partial = get_pass("quantize_nncf")(ignored_names=["conv2/WithoutBiases"]).run(cnn_ir,
                                                                                   make_ctx(tmp_path / "b", cal))
    assert int8_constants(partial.path) == int8_constants(full.path) - 1
    assert partial.precision == "mixed"
    # the ONNX node name works too: it covers every op OpenVINO made from that node
    by_onnx_name = get_pass("quantize_nncf")(ignored_names=["conv2"]).run(cnn_ir, make_ctx(tmp_path / "c", cal))
    assert int8_constants(by_onnx_name.path) == int8_constants(full.path) - 1
    assert by_onnx_name.metadata["ignored_ops"] == ["conv2", "conv2/WithoutBiases"]


def test_npu_target_uses_npu_hardware_config(tmp_path: Path, cnn_ir: Artifact) -> None:
    out = get_pass("quantize_nncf")().run(cnn_ir, make_ctx(tmp_path, samples(4), target="intel-npu"))
    assert out.metadata["target_device"] == "NPU"
    assert "FakeQuantize" in op_types(out.path)


def test_unknown_ignored_names_and_types_are_config_errors(tmp_path: Path, cnn_ir: Artifact) -> None:
    with pytest.raises(ConfigError,
                       match=r"ignored_names not in the model: conv9.*ignored_types not in the model: Conv "):
        get_pass("quantize_nncf")(ignored_names=["conv9"], ignored_types=["Conv"]).run(
            cnn_ir, make_ctx(tmp_path, samples(2)))


def test_without_calibration_the_error_says_how_to_give_it(tmp_path: Path, cnn_ir: Artifact) -> None:
    with pytest.raises(QuantizationError, match=r"--calibration"):
        get_pass("quantize_nncf")().run(cnn_ir, make_ctx(tmp_path, None))
    with pytest.raises(QuantizationError, match=r"lacks model input.*input"):
        get_pass("quantize_nncf")().run(cnn_ir, make_ctx(tmp_path, samples(2, name="x")))


@pytest.mark.parametrize(("config", "message"), [
    ({"preset": "fast"}, "preset must be one of performance, mixed"),
    ({"subset_size": 0}, "subset_size must be >= 1"),
    ({"ignored_scope": ["a"]}, "unknown option.*ignored_scope"),
])
def test_bad_config_is_a_config_error(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_pass("quantize_nncf")(**config)


@pytest.mark.slow
def test_real_classifier_int8_ir_agrees_with_fp32(tmp_path: Path) -> None:
    """PP-OCR's text direction classifier on crops of a real text photo, upright and turned 180°."""
    model = real_model("ppocr-cls")
    ir = ir_of(model, tmp_path, {"x": [1, 3, 48, 192]})
    cal = []
    for f in text_crops(8):
        cal += [f, {"x": np.ascontiguousarray(f["x"][:, :, ::-1, ::-1])}]
    out = get_pass("quantize_nncf")(subset_size=8).run(ir, make_ctx(tmp_path, cal))
    assert out.metadata["fake_quantize_nodes"] > 20 and out.metadata["calibration_samples"] == 8
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = np.concatenate([reference.run(None, f)[0] for f in cal])
    got = np.concatenate([run_ir(out.path, f) for f in cal])
    confident = expected.max(axis=1) >= 0.75
    assert confident.sum() >= 4
    assert (expected.argmax(axis=1) == got.argmax(axis=1))[confident].all()
    assert float(np.abs(expected - got).mean()) < 0.15       # probabilities move by a few points at most


@pytest.mark.slow
def test_no_telemetry_leaves_the_process(tmp_path: Path) -> None:
    """Outside pytest (NNCF stubs its own telemetry under pytest), in a fresh home without an opt-out
    file (where openvino-telemetry would count the missing file as consent, write a client id and send),
    convert + quantize must resolve no host, open no connection, and leave no telemetry client id."""
    tiny_cnn(tmp_path / "cnn.onnx")
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent(f"""
        import json, socket, sys
        attempts = []
        real_connect = socket.socket.connect
        def guarded(self, address):
            attempts.append(repr(address))
            raise OSError("network disabled by the test")
        def resolve(host, *args, **kwargs):
            attempts.append(repr(host))
            raise OSError("network disabled by the test")
        socket.socket.connect = guarded
        socket.getaddrinfo = resolve
        import numpy as np
        from pathlib import Path
        from edgeml.compiler.passes.base import Artifact, BuildContext, get_pass
        from edgeml.targets import get_target
        work = Path({str(tmp_path)!r})
        ctx = BuildContext(target=get_target("x86-cpu"), workdir=work / "w",
                           calibration=[{{"input": np.ones((1, 3, 16, 16), np.float32)}}] * 3)
        art = Artifact(path=work / "cnn.onnx", format="onnx", precision="fp32", digest="x")
        ir = get_pass("convert_openvino")().run(art, ctx)
        q = get_pass("quantize_nncf")().run(ir, ctx)
        import openvino_telemetry.main as tm
        from nncf.telemetry import wrapper
        instance = getattr(tm.Telemetry, "_SingletonMetaClass__single_instance", None)
        print(json.dumps({{"attempts": attempts, "ov_consent": getattr(instance, "consent", None),
                           "nncf_consent": getattr(getattr(wrapper.telemetry, "_impl", None), "consent", None),
                           "quantized": q.path.exists()}}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI", "NNCF_DEV", "PYTEST_CURRENT_TEST")}
    env["PYTHONPATH"] = str(REPO)
    env["HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["quantized"] is True
    assert result["attempts"] == []
    assert result["ov_consent"] is False and result["nncf_consent"] in (False, None)
    assert not (home / "intel" / "openvino_ga_cid").exists()
