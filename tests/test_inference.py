"""edgeml.load: verify, unpack into the cache, select a backend, predict."""

from __future__ import annotations

import numpy as np
import pytest

import edgeml
from edgeml.bundle import SigningKey, TrustStore, trust_key
from edgeml.errors import BackendUnavailableError, InferenceInputError, IntegrityError, SignatureError
from edgeml.inference import Model, open_bundle
from edgeml.paths import cache_dir
from edgeml.runtimes.selection import SelectionPolicy
from tests.support.bundles import make_bundle
from tests.support.real_models import real_model
from tests.support.tiny_models import tiny_mlp


@pytest.fixture
def mlp_bundle(tmp_path, signing_key):
    return make_bundle(tmp_path / "mlp.edgepkg", signing_key, tiny_mlp(tmp_path / "mlp.onnx"), name="mlp")


def test_load_bundle_file_predicts_and_matches_the_smoke_sample(mlp_bundle, trust):
    with edgeml.load(mlp_bundle, trust) as model:
        assert isinstance(model, Model)
        assert (model.name, model.version, model.runtime, model.device) == ("mlp", "1.0.0", "onnxruntime",
                                                                            "CPUExecutionProvider")
        assert model.fallback is False and model.manifest.target_id == "x86-cpu"
        assert [s.name for s in model.inputs] == ["x"] and [s.name for s in model.outputs] == ["y"]
        model.smoke_test()
        x = np.ones((2, 4), np.float32)
        by_array, by_dict, by_kw = model.predict(x), model.predict({"x": x}), model.predict(x=x)
    np.testing.assert_array_equal(by_array["y"], by_dict["y"])
    np.testing.assert_array_equal(by_array["y"], by_kw["y"])
    assert by_array["y"].shape == (2, 3)
    assert model.describe()["device"] == "CPUExecutionProvider"


def test_bundle_is_unpacked_once_into_the_cache_and_a_directory_loads_too(mlp_bundle, trust):
    first = open_bundle(mlp_bundle, trust)
    assert first.root is not None and first.root.parent == cache_dir() / "bundles"
    again = open_bundle(mlp_bundle, trust)
    assert again.root == first.root
    with edgeml.load(first.root, trust) as model:
        assert model.predict(np.zeros((1, 4), np.float32))["y"].shape == (1, 3)


def test_default_trust_is_the_users_trusted_keys(tmp_path, mlp_bundle, signing_key):
    with pytest.raises(SignatureError, match="no trusted keys"):
        edgeml.load(mlp_bundle)
    (tmp_path / "k.pub").write_bytes(signing_key.public_pem())
    trust_key(tmp_path / "k.pub")
    with edgeml.load(mlp_bundle) as model:
        assert model.name == "mlp"


def test_untrusted_or_tampered_bundles_are_refused(mlp_bundle, trust):
    with pytest.raises(SignatureError, match="not trusted"):
        edgeml.load(mlp_bundle, TrustStore([SigningKey.generate().public_key]))
    root = open_bundle(mlp_bundle, trust).root
    assert root is not None
    model_file = next((root / "model").iterdir())
    model_file.write_bytes(model_file.read_bytes() + b"x")
    with pytest.raises(IntegrityError, match="modified"):
        edgeml.load(root, trust)
    with pytest.raises(IntegrityError):   # the cached copy is re-verified, not trusted blindly
        edgeml.load(mlp_bundle, trust)


def test_predict_rejects_bad_inputs_with_clear_messages(mlp_bundle, trust):
    with edgeml.load(mlp_bundle, trust) as model:
        with pytest.raises(InferenceInputError, match=r"input 'x' has shape \[4\]"):
            model.predict(np.zeros(4, np.float32))
        with pytest.raises(InferenceInputError, match="missing input"):
            model.predict({"nope": np.zeros((1, 4), np.float32)})


def test_predict_takes_the_same_inputs_whichever_path_checks_them(mlp_bundle, trust):
    # one contiguous float32 array goes through predict's inline check; anything else through the full
    # one, which converts what it safely can and names the problem otherwise
    with edgeml.load(mlp_bundle, trust) as model:
        x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
        want = model.predict({"x": x})["y"]
        np.testing.assert_array_equal(model.predict(x)["y"], want)
        np.testing.assert_array_equal(model.predict(np.asfortranarray(x))["y"], want)
        np.testing.assert_allclose(model.predict(x.astype(np.float16))["y"], want, atol=1e-2)
        wide = np.zeros((3, 8), np.float32)
        np.testing.assert_array_equal(model.predict(wide[:, ::2])["y"],
                                      model.predict(np.zeros((3, 4), np.float32))["y"])
        with pytest.raises(InferenceInputError, match=r"input 'x' has shape \[3, 5\]"):
            model.predict(np.zeros((3, 5), np.float32))
        with pytest.raises(InferenceInputError, match="dtype complex64"):
            model.predict(np.zeros((3, 4), np.complex64))


def test_jetson_bundle_on_this_host_is_refused_or_falls_back_by_config(tmp_path, signing_key, trust):
    bundle = make_bundle(tmp_path / "j.edgepkg", signing_key, tiny_mlp(tmp_path / "m.onnx"), name="j",
                         target="jetson-orin")
    with pytest.raises(BackendUnavailableError) as err:
        edgeml.load(bundle, trust, policy=SelectionPolicy(allow_other_arch=True))
    assert any("not allowed by target profile 'jetson-orin'" in r for r in err.value.reasons)
    with edgeml.load(bundle, trust, policy=SelectionPolicy(allow_other_arch=True, cpu_fallback=True)) as model:
        assert model.fallback is True and model.device == "CPUExecutionProvider"
        assert model.describe()["fallback_reason"]
        model.smoke_test()


def test_intel_npu_openvino_bundle_falls_back_to_the_cpu_plugin(tmp_path, signing_key, trust):
    import openvino as ov

    onnx_path = tiny_mlp(tmp_path / "m.onnx", batch=1)
    ov.save_model(ov.convert_model(str(onnx_path)), str(tmp_path / "m.xml"), compress_to_fp16=False)
    bundle = make_bundle(tmp_path / "npu.edgepkg", signing_key, tmp_path / "m.xml", name="npu", target="intel-npu",
                         precision="fp32")
    with edgeml.load(bundle, trust) as model:
        assert (model.runtime, model.device, model.fallback) == ("openvino", "CPU", True)
        model.smoke_test()
    with pytest.raises(BackendUnavailableError, match="openvino/NPU"):
        edgeml.load(bundle, trust, cpu_fallback=False)


@pytest.mark.slow
@pytest.mark.parametrize(("key", "target", "runtime"), [
    ("ppocr-cls", "x86-cpu", "onnxruntime"),
    ("face-detection", "arm64-cpu", "litert"),
])
def test_real_models_load_and_pass_their_smoke_test(tmp_path, signing_key, trust, key, target, runtime):
    bundle = make_bundle(tmp_path, signing_key, real_model(key), name=key, target=target)
    policy = SelectionPolicy(allow_other_arch=True)   # the arm64 profile on this x86 host
    with edgeml.load(bundle, trust, policy=policy) as model:
        assert model.runtime == runtime
        model.smoke_test()
