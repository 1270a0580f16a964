"""A Keras model (and a SavedModel) in, through the TFLite toolchain that already holds TensorFlow: TensorFlow's own
converter (``tf.lite.TFLiteConverter``) makes a ``.tflite`` the compiler builds for LiteRT targets.

The model is made and saved inside the toolchain (tests/compiler/keras_side.py); ``edgeml build
tiny.keras -t arm64-cpu -p fp32`` builds it; the bundle's model, run by LiteRT here, answers a fresh
input as Keras did, and the manifest records TensorFlow/Keras versions and the converter.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeml.bundle import TrustStore, unpack_bundle
from edgeml.compiler import api
from edgeml.runtimes import open_model
from edgeml.toolchains import Toolchain
from tests.compiler.cli_build import edgeml_build
from tests.compiler.conftest import FAST
from tests.support.toolchain import pinned_toolchains_dir, tflite_toolchain

pytestmark = pytest.mark.toolchain
_ = tflite_toolchain


def test_a_keras_model_builds_for_litert_and_answers_as_keras(tflite_toolchain: Toolchain, monkeypatch, default_key,
                                                               tmp_path):
    pinned_toolchains_dir(monkeypatch, tflite_toolchain)
    script = Path(__file__).with_name("keras_side.py")
    proc = subprocess.run([str(tflite_toolchain.python), str(script), str(tmp_path / "keras")], capture_output=True,
                          text=True, timeout=300, check=False, env=tflite_toolchain.env({"TF_CPP_MIN_LOG_LEVEL": "2"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = tmp_path / "tiny.edgepkg"
    report = edgeml_build(tmp_path / "keras" / "tiny.keras", "-t", "arm64-cpu", "-p", "fp32", "--runtime", "litert",
                          "-o", str(bundle)).report
    assert report["chosen"] == "litert/fp32" and report["data"]["import_cached"] is False
    unpacked = unpack_bundle(bundle, tmp_path / "unpacked", TrustStore.default())
    origin = unpacked.manifest.raw["provenance"]["import"]
    assert origin["framework"] == "tensorflow" and origin["exporter"] == "tf.lite.TFLiteConverter.from_saved_model"
    assert origin["versions"]["tensorflow"] == "2.19.0" and origin["source_kind"].startswith("Keras 3")
    assert origin["export_check"]["checked"] is True and origin["export_check"]["runtime"] == "litert"
    check = np.load(tmp_path / "keras" / "check.npz")
    with open_model(unpacked.model_path, "litert") as model:
        (name,) = [s.name for s in model.inputs]
        got = next(iter(model.run({name: check["x"]}).values()))
    np.testing.assert_allclose(got, check["y"], rtol=1e-4, atol=1e-5)

    # the same model as a SavedModel directory, through edgeml.compile in this process
    saved = api.compile(tmp_path / "keras" / "saved_model", "arm64-cpu", precision="fp32", runtime="litert",
                        name="tiny-saved", output=tmp_path / "saved.edgepkg", **FAST)
    assert saved.report.data["import"]["source_kind"] == "TensorFlow SavedModel"  # type: ignore[index]
    assert saved.report.data["import"]["export_check"]["checked"] is True  # type: ignore[index]
    from_saved = unpack_bundle(saved.bundle_path, tmp_path / "unpacked-saved", TrustStore.default())
    with open_model(from_saved.model_path, "litert") as model:
        got = next(iter(model.run({model.inputs[0].name: check["x"]}).values()))
    np.testing.assert_allclose(got, check["y"], rtol=1e-4, atol=1e-5)

    # a rebuild of the same file reuses the cached conversion (no TensorFlow process) and gives the same model
    again = api.compile(tmp_path / "keras" / "tiny.keras", "arm64-cpu", precision="fp32", runtime="litert",
                        output=tmp_path / "again.edgepkg", **FAST)
    assert again.report.data["import_cached"] is True
    rebuilt = unpack_bundle(again.bundle_path, tmp_path / "unpacked-again", TrustStore.default())
    assert rebuilt.model_path.read_bytes() == unpacked.model_path.read_bytes()
