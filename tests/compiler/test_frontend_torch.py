"""The PyTorch front-end on small real-ish models, against torch eager (goal: cosine >= 0.9999 at FP32).

- In process: ``edgeml.compile(module, example_inputs=..., dynamic_shapes=...)`` on a CNN feeding an LSTM
  with explicit state, and ``edgeml.compile(exported_program)`` on a GRU with state, run in a Python that
  holds torch and edgeml as a user's does (tests/compiler/torch_side.py); the bundles answer fresh
  inputs of another batch size like eager.
- CLI: ``edgeml build gru.pt2`` (a saved ExportedProgram of a GRU with state), exported in the torch
  toolchain; this test process, which has no torch, loads the bundle and compares with eager's outputs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeml
from edgeml.fileio import sha256_file
from edgeml.toolchains import Toolchain
from tests.compiler.cli_build import child_env, edgeml_build
from tests.support.toolchain import pinned_toolchains_dir, torch_toolchain, user_python_with_torch

pytestmark = pytest.mark.toolchain
_ = torch_toolchain  # the session fixture, imported for pytest
GOAL_COSINE = 0.9999
SIDE_SCRIPT = Path(__file__).with_name("torch_side.py")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def torch_side(tmp_path_factory: pytest.TempPathFactory, torch_toolchain: Toolchain) -> dict[str, Any]:
    """Run the user's script once: its result, and where it left the .pt2 and its check data."""
    from edgeml.bundle import generate_key

    work = tmp_path_factory.mktemp("torch-side")
    home = work / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEML_HOME", str(home))
        generate_key()
    python = user_python_with_torch(work, torch_toolchain)
    proc = subprocess.run([str(python), str(SIDE_SCRIPT), str(work / "out")], capture_output=True, text=True,
                          timeout=600, check=False,
                          env=child_env(EDGEML_HOME=str(home), EDGEML_CACHE_DIR=str(work / "cache")))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads((work / "out" / "result.json").read_text())
    result["out_dir"] = work / "out"
    return result


def test_a_module_compiled_in_process_matches_torch_eager(torch_side):
    run = torch_side["conv_lstm"]
    assert torch_side["torch"].startswith("2.13.0")
    assert run["outputs"] == ["output_0", "output_1", "output_2"]
    # Dim("batch") keeps its name in the bundle, on the state's second axis too
    assert run["inputs"] == [{"name": "x", "shape": ["batch", 3, 16, 16]}, {"name": "h", "shape": [1, "batch", 24]},
                             {"name": "c", "shape": [1, "batch", 24]}]
    for name, cosine in run["cosines"].items():  # fresh inputs, batch 3 (the export traced batch 2)
        assert cosine >= GOAL_COSINE, (name, cosine, run["max_abs"])
        assert run["max_abs"][name] < 1e-4


def test_an_exported_program_compiled_in_process_matches_torch_eager(torch_side):
    run = torch_side["gru_program"]
    assert run["source_kind"] == "ExportedProgram" and run["outputs"] == ["next_state", "scores"]
    assert min(run["cosines"].values()) >= GOAL_COSINE, run


def test_the_bundle_records_framework_versions_and_export_options(torch_side):
    origin = torch_side["conv_lstm"]["provenance"]["import"]
    assert origin["framework"] == "pytorch" and origin["source_kind"] == "ConvLSTM"
    assert origin["exporter"] == "torch.onnx.export(dynamo=True)"
    assert origin["versions"]["torch"].startswith("2.13.0") and "onnxscript" in origin["versions"]
    assert origin["options"]["opset"] == 18
    assert origin["options"]["dynamic_shapes"]["x"] == {"0": {"dim": "batch", "min": 0, "max": None}}
    assert origin["export_check"]["checked"] is True and origin["export_check"]["min_cosine"] >= GOAL_COSINE


def test_cli_builds_a_saved_exported_program_that_matches_torch_eager(torch_side, torch_toolchain, monkeypatch,
                                                                      default_key, tmp_path):
    pinned_toolchains_dir(monkeypatch, torch_toolchain)
    out_dir: Path = torch_side["out_dir"]
    bundle = tmp_path / "gru.edgepkg"
    report = edgeml_build(out_dir / "gru.pt2", "-t", "x86-cpu", "-p", "fp32", "--runtime", "onnxruntime",
                          "-o", str(bundle)).report
    assert report["data"]["import"]["source_kind"] == "torch.export.save (.pt2)"
    check = np.load(out_dir / "gru_check.npz")
    with edgeml.load(bundle) as model:
        got = model.predict(frames=check["frames"], state=check["state"])
        provenance = model.manifest.raw["provenance"]
    assert provenance["source_name"] == "gru.pt2"
    assert provenance["source_sha256"] == sha256_file(out_dir / "gru.pt2")
    assert _cosine(got["output_0"], check["out_scores"]) >= GOAL_COSINE
    assert _cosine(got["output_1"], check["out_state"]) >= GOAL_COSINE
    np.testing.assert_allclose(got["output_1"], check["out_state"], atol=1e-5)
