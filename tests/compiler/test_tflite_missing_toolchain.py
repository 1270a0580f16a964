"""Without the TFLite toolchain, an ONNX -> TFLite build fails with the command that installs it."""

from __future__ import annotations

import pytest

from edgeml.compiler import api
from edgeml.compiler.data import SampleSet
from edgeml.compiler.modelinfo import digest_files
from edgeml.compiler.passes.base import Artifact, BuildContext
from edgeml.compiler.passes.convert_tflite import ConvertTflite
from edgeml.errors import CompileError, ConfigError, ToolchainError
from edgeml.targets import get_target
from tests.compiler.conftest import FAST


@pytest.fixture(autouse=True)
def _no_toolchain(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEML_TOOLCHAINS_DIR", str(tmp_path / "empty-toolchains"))


def test_convert_pass_names_the_install_command(tmp_path, cnn):
    ctx = BuildContext(target=get_target("arm64-cpu"), workdir=tmp_path / "w")
    art = Artifact(cnn, "onnx", "fp32", digest_files([cnn]))
    with pytest.raises(ToolchainError) as err:
        ConvertTflite(precision="fp32").run(art, ctx)
    assert "edgeml toolchain install tflite" in str(err.value)
    assert "converting ONNX models to TFLite" in str(err.value)


def test_build_reports_the_missing_toolchain_per_candidate(tmp_path, cnn, default_key):
    with pytest.raises(CompileError) as err:
        api.compile(cnn, "arm64-cpu", precision="fp32", runtime="litert", output=tmp_path / "x.edgepkg", **FAST)
    assert "litert/fp32" in str(err.value) and "edgeml toolchain install tflite" in str(err.value)


def test_convert_pass_validates_its_config_before_any_work(tmp_path, cnn):
    with pytest.raises(ConfigError, match="precision must be one of fp32, fp16, int8"):
        ConvertTflite(precision="int4")
    with pytest.raises(ConfigError, match="unknown option"):
        ConvertTflite(precison="fp32")
    with pytest.raises(ConfigError, match="quant_type"):
        ConvertTflite(quant_type="per-row")


def test_int8_without_calibration_is_refused_before_the_toolchain_runs(tmp_path, cnn, monkeypatch):
    from edgeml.compiler.passes import convert_tflite

    monkeypatch.setattr(convert_tflite, "require", lambda *a, **k: type("T", (), {"marker": {}})())
    ctx = BuildContext(target=get_target("arm64-cpu"), workdir=tmp_path / "w", calibration=SampleSet([]))
    art = Artifact(cnn, "onnx", "fp32", digest_files([cnn]))
    with pytest.raises(CompileError, match="needs calibration data"):
        ConvertTflite(precision="int8").run(art, ctx)
