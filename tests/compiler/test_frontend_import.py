"""The import step without a framework: what each path is, the errors that say what to do, the export
check against the framework's outputs, the export's example inputs as samples, and provenance reaching
the signed manifest. Fast: tiny generated ONNX models stand in for an exporter's output directory; the
real exporters run in tests/compiler/test_frontend_{torch,hf,keras}.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeml.bundle import TensorSpec
from edgeml.compiler import api, frontends
from edgeml.compiler.frontends import detect
from edgeml.compiler.frontends.export_check import check_export
from edgeml.compiler.frontends.imported import read_export_dir
from edgeml.compiler.frontends.samples import example_samples
from edgeml.errors import ConfigError, ConversionError, ToolchainError
from tests.compiler.cli_build import bundle_model, child_env
from tests.compiler.conftest import FAST
from tests.support.tiny_models import tiny_cnn


def _export_dir(tmp_path: Path, *, scale: float = 1.0) -> Path:
    """What a front-end writes: model.onnx, export.json, example.npz (outputs computed by onnxruntime,
    times ``scale`` to play an exporter that mistranslated the model) and a tokenizer asset."""
    import onnxruntime as ort

    out = tmp_path / "export"
    tiny_cnn(out / "model.onnx", batch="N")
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    (probs,) = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": x})
    np.savez(out / "example.npz", **{"in/input": x, "out/probs": probs * scale})
    (out / "export.json").write_text(json.dumps({"framework": "pytorch", "versions": {"torch": "2.13.0"},
                                                 "exporter": "torch.onnx.export(dynamo=True)", "options": {}}))
    (out / "assets").mkdir()
    (out / "assets" / "tokenizer.json").write_text("{}")
    return out


def _imported(tmp_path: Path, scale: float = 1.0) -> frontends.ImportedModel:
    out = _export_dir(tmp_path, scale=scale)
    return read_export_dir(out, "model.onnx", name="tiny", source_name="tiny.pt2", source_sha256="ab" * 32)


@pytest.mark.parametrize(("name", "kind"), [("m.onnx", "onnx"), ("m.TFLITE", "tflite"), ("m.pt2", detect.PT2),
                                            ("m.keras", detect.KERAS), ("m.h5", detect.KERAS)])
def test_files_are_recognised_by_suffix(tmp_path, name, kind):
    (tmp_path / name).write_bytes(b"x")
    assert detect.source_kind(tmp_path / name) == kind
    assert frontends.needs_import(tmp_path / name) == (kind not in ("onnx", "tflite"))


def test_directories_are_hugging_face_checkpoints_or_saved_models(tmp_path):
    hf, saved, bare, no_weights = (tmp_path / d for d in ("hf", "saved", "bare", "noweights"))
    for d in (hf, saved, bare, no_weights):
        d.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"w")
    (saved / "saved_model.pb").write_bytes(b"pb")
    (no_weights / "config.json").write_text("{}")
    assert detect.source_kind(hf) == detect.HUGGINGFACE
    assert detect.source_kind(saved) == detect.SAVED_MODEL
    with pytest.raises(ConfigError, match=r"neither a Hugging Face checkpoint .* nor a SavedModel"):
        detect.source_kind(bare)
    with pytest.raises(ConfigError, match="no weights"):
        detect.source_kind(no_weights)


def test_a_pickled_torch_file_is_refused_with_the_way_to_save_an_exported_program(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x02")
    with pytest.raises(ConfigError, match=r"torch\.export\.save\(torch\.export\.export\(") as err:
        detect.source_kind(tmp_path / "model.pt")
    assert "edgeml.compile(module, example_inputs=" in str(err.value)


def test_a_directory_digest_covers_names_and_contents(tmp_path):
    (tmp_path / "a.txt").write_text("1")
    first = detect.digest_source(tmp_path)
    (tmp_path / "a.txt").write_text("2")
    second = detect.digest_source(tmp_path)
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert len({first, second, detect.digest_source(tmp_path)}) == 3


def test_the_export_check_passes_a_faithful_export_and_records_per_output_figures(tmp_path):
    imported = _imported(tmp_path)
    assert set(imported.assets) == {"tokenizer.json"}
    check = check_export(imported)
    assert check["checked"] is True and check["runtime"] == "onnxruntime"
    assert check["outputs"]["probs"]["cosine"] > 0.99999  # type: ignore[index]


def test_the_export_check_fails_an_export_that_disagrees_with_the_framework(tmp_path):
    bad = _imported(tmp_path, scale=-1.0)
    with pytest.raises(ConversionError, match=r"disagrees with the framework .* \(cosine -1\.000000 < 0\.999\)"):
        check_export(bad)


def test_example_rows_become_samples_only_along_a_dynamic_batch(tmp_path):
    imported = _imported(tmp_path)
    dynamic = [TensorSpec("input", "float32", ("N", 3, 16, 16))]
    samples = example_samples(imported.example, dynamic)
    assert samples is not None and len(samples) == 3 and samples[0]["input"].shape == (1, 3, 16, 16)
    static = example_samples(imported.example, [TensorSpec("input", "float32", (3, 3, 16, 16))])
    assert static is not None and len(static) == 1 and static[0]["input"].shape == (3, 3, 16, 16)
    assert example_samples(imported.example, [TensorSpec("other", "float32", ("N", 4))]) is None


def test_a_front_end_export_is_built_with_its_provenance_assets_and_example_samples(tmp_path, monkeypatch,
                                                                                   default_key):
    """The toolchain is replaced by a tiny export directory (a seam test: the real ones follow)."""
    from edgeml.compiler.frontends import toolchain_export

    calls: list[tuple[str, int]] = []

    def fake_export(kind, source, workdir, *, opset, log, use_cache):  # type: ignore[no-untyped-def]
        calls.append((kind, opset))
        return read_export_dir(_export_dir(workdir), "model.onnx", name="gru", source_name=source.name,
                               source_sha256=detect.digest_source(source))

    monkeypatch.setattr(toolchain_export, "export_with_toolchain", fake_export)
    pt2 = tmp_path / "gru.pt2"
    pt2.write_bytes(b"exported program")
    result = api.compile(pt2, "x86-cpu", precision="fp32", runtime="onnxruntime", output=tmp_path / "b.edgepkg",
                         **FAST)
    assert calls == [(detect.PT2, 18)]
    manifest, _ = bundle_model(result.bundle_path, tmp_path / "unpacked")
    prov = manifest["provenance"]
    assert prov["source_name"] == "gru.pt2" and prov["source_sha256"] == detect.digest_source(pt2)
    assert prov["import"]["framework"] == "pytorch" and prov["import"]["export_check"]["checked"] is True
    assert manifest["name"] == "gru"
    assert result.report.data["data_source"] == "the exporter's example inputs"
    assert any("the exporter's example inputs were used" in n for n in result.report.notes)


def test_export_options_are_validated_before_any_export(tmp_path, default_key):
    (tmp_path / "m.pt2").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"opset must be an integer from 7 to 20 \(the maximum of target "
                                          r"jetson-orin\)"):
        api.compile(tmp_path / "m.pt2", "jetson-orin", export_options={"opset": 21})
    with pytest.raises(ConfigError, match="unknown export option"):
        api.compile(tmp_path / "m.pt2", "jetson-orin", export_options={"opset": 17, "dynamo": False})
    onnx_model = tiny_cnn(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="apply to models edgeml exports"):
        api.compile(onnx_model, "x86-cpu", example_inputs=(1,))
    with pytest.raises(ConfigError, match="cannot build a dict"):
        api.compile({"not": "a model"}, "x86-cpu")  # type: ignore[arg-type]


def test_cli_build_of_a_pt2_without_the_toolchain_names_the_install_command(tmp_path, default_key):
    (tmp_path / "m.pt2").write_bytes(b"x")
    env = child_env(EDGEML_TOOLCHAINS_DIR=str(tmp_path / "no-toolchains"))
    proc = subprocess.run([sys.executable, "-m", "edgeml.cli", "build", str(tmp_path / "m.pt2"), "-t", "x86-cpu"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "the 'torch' toolchain (needed for exporting a .pt2 ExportedProgram) is not installed" in proc.stderr
    assert "edgeml toolchain install torch" in proc.stderr and "Traceback" not in proc.stderr


def test_require_reports_each_recipes_own_size(tmp_path, monkeypatch):
    from edgeml.toolchains import require

    monkeypatch.setenv("EDGEML_TOOLCHAINS_DIR", str(tmp_path))
    with pytest.raises(ToolchainError, match=r"≈1\.1 GB install"):
        require("torch")


def test_cli_opset_reaches_the_exporter_and_is_refused_for_an_onnx_model(tmp_path, monkeypatch, default_key):
    from click.testing import CliRunner

    from edgeml.cli import main
    from edgeml.compiler.frontends import toolchain_export

    opsets: list[int] = []

    def fake_export(kind, source, workdir, *, opset, log, use_cache):  # type: ignore[no-untyped-def]
        opsets.append(opset)
        return read_export_dir(_export_dir(workdir), "model.onnx", name="m", source_name=source.name,
                               source_sha256="00" * 32)

    monkeypatch.setattr(toolchain_export, "export_with_toolchain", fake_export)
    (tmp_path / "m.pt2").write_bytes(b"x")
    common = ["-t", "x86-cpu", "-p", "fp32", "--runtime", "onnxruntime", "--bench-seconds", "0.05"]
    result = CliRunner().invoke(main, ["build", str(tmp_path / "m.pt2"), *common, "--opset", "17",
                                       "-o", str(tmp_path / "m.edgepkg")])
    assert result.exit_code == 0, result.output
    assert opsets == [17]
    onnx_model = tiny_cnn(tmp_path / "plain.onnx")
    refused = CliRunner().invoke(main, ["build", str(onnx_model), *common, "--opset", "17"])
    assert refused.exit_code == 2 and "apply to models edgeml exports" in refused.output
