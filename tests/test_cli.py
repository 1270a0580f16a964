"""The CLI only builds a config and calls edgeml.compiler.api.compile: tests patch that function and
assert on the config; the other commands run for real on a small bundle."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgeml import cli
from edgeml.bundle import SigningKey, generate_key
from edgeml.compiler import api
from edgeml.compiler.preprocess import Preprocess
from edgeml.compiler.report import BuildReport, Candidate
from edgeml.compiler.request import BuildRequest, Thresholds
from edgeml.errors import FidelityError, ModelCheckError
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def in_order(line: str, values: Sequence[str]) -> bool:
    """Each value appears in ``line`` after the one before it (a table row with its cells in order)."""
    pos = 0
    for value in values:
        pos = line.find(value, pos)
        if pos < 0:
            return False
        pos += len(value)
    return True


def _line_with(text: str, *values: str) -> str:
    """The one output line holding every value, in order (fails when a value is split across lines)."""
    found = [line for line in text.splitlines() if in_order(line, values)]
    assert len(found) == 1, f"expected one line with {values}, got {found} in:\n{text}"
    return found[0]


@pytest.fixture
def fake_compile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[BuildRequest]:
    calls: list[BuildRequest] = []

    def fake(request: BuildRequest) -> api.BuildResult:
        calls.append(request)
        cand = Candidate("onnxruntime", "fp32", status="passed", benchmark={"p50_ms": 1.0, "p99_ms": 2.0}, speedup=1.0)
        report = BuildReport(model=str(request.model), target=str(request.target), precision=request.precision,
                             candidates=[cand], chosen=cand, why="only candidate",
                             baseline={"p50_ms": 1.0, "p99_ms": 2.0})
        return api.BuildResult(tmp_path / "out.edgepkg", report)

    monkeypatch.setattr(api, "compile", fake)
    return calls


def test_build_turns_flags_into_one_build_request(fake_compile, tmp_path: Path) -> None:
    res = _run("build", "m.onnx", "--target", "intel-npu", "--precision", "int8", "--calibration", "cal.npz",
               "--eval", "ev.npz", "--labels", "l.npy", "--key", "team", "--input-shape", "input=1x3x224x224",
               "--input-shape", "mask=1X1", "--fallback", "--exclude-node", "conv1", "--exclude-op-type", "Softmax",
               "--min-agreement", "0.99", "--max-drop", "0.005", "--min-snr-db", "20", "--version", "2.0.0",
               "--name", "det", "--preprocess", '{"size": [224, 224]}', "--no-cache", "-o", "out.edgepkg",
               "--calibration-method", "entropy", "--per-channel")
    assert res.exit_code == 0, res.output
    (req,) = fake_compile
    assert req.model == "m.onnx" and req.target == "intel-npu"
    assert req.precision == "int8" and req.calibration == "cal.npz" and req.evaluation == "ev.npz"
    assert req.labels == "l.npy" and req.key == "team" and req.output == "out.edgepkg"
    assert req.input_shapes == {"input": [1, 3, 224, 224], "mask": [1, 1]}
    assert req.fallback is True and req.exclude_nodes == ["conv1"] and req.exclude_op_types == ["Softmax"]
    assert req.thresholds == Thresholds(min_agreement=0.99, min_cosine=0.98, min_snr_db=20.0, max_drop=0.005)
    assert req.quant_options == {"per_channel": True, "calibration_method": "entropy"}
    assert req.version == "2.0.0" and req.name == "det" and req.preprocess == Preprocess(size=(224, 224))
    assert req.use_cache is False
    assert "onnxruntime/fp32" in res.output and "bundle:" in res.output


def test_build_defaults_are_the_build_requests(fake_compile) -> None:
    res = _run("build", "m.onnx", "-t", "x86-cpu", "--json")
    assert res.exit_code == 0
    assert fake_compile == [BuildRequest("m.onnx", "x86-cpu", progress=False, exclude_nodes=[], exclude_op_types=[])]
    data = json.loads(res.output)
    assert data["chosen"] == "onnxruntime/fp32" and data["bundle"].endswith("out.edgepkg")


def test_a_bad_request_is_a_usage_error_before_compile(fake_compile) -> None:
    res = _run("build", "m.onnx", "-t", "x86-cpu", "--version", "one")
    assert res.exit_code == 2 and "one" in res.output and not fake_compile


@pytest.mark.parametrize("value", ["input", "input=", "=1x2", "input=1xa"])
def test_bad_input_shape_is_a_usage_error(fake_compile, value: str) -> None:
    res = _run("build", "m.onnx", "-t", "x86-cpu", "--input-shape", value)
    assert res.exit_code == 2 and "NAME=1x3x224x224" in res.output and not fake_compile


@pytest.mark.parametrize(("error", "code"), [
    (FidelityError("int8 fails the gate: agreement 0.91"), 1),
    (ModelCheckError(["opset 22 is above", "input 'x' is dynamic"]), 1),
])
def test_build_errors_print_the_message_without_traceback(monkeypatch, error: Exception, code: int) -> None:
    def fail(*a: Any, **k: Any) -> None:
        raise error

    monkeypatch.setattr(api, "compile", fail)
    res = CliRunner().invoke(cli.main, ["build", "m.onnx", "-t", "x86-cpu"])
    assert res.exit_code == code
    assert "Traceback" not in res.output and str(error).splitlines()[0] in res.output


def test_unknown_target_is_exit_2_with_the_known_ones(tmp_path: Path) -> None:
    model = tiny_mlp(tmp_path / "m.onnx")
    res = CliRunner().invoke(cli.main, ["build", str(model), "-t", "toaster"])
    assert res.exit_code == 2 and "unknown target 'toaster'" in res.output and "x86-cpu" in res.output


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, SigningKey]:
    key = SigningKey.generate()
    path = make_bundle(tmp_path / "b.edgepkg", key, model=tiny_mlp(tmp_path / "m.onnx"))
    return path, key


def test_verify_exit_codes(bundle, tmp_path: Path) -> None:
    path, key = bundle
    (tmp_path / "good.pub").write_bytes(key.public_pem())
    (tmp_path / "other.pub").write_bytes(SigningKey.generate().public_pem())
    ok = _run("verify", str(path), "--trust", str(tmp_path / "good.pub"))
    assert ok.exit_code == 0 and ok.output.startswith("OK:")
    wrong = CliRunner().invoke(cli.main, ["verify", str(path), "--trust", str(tmp_path / "other.pub")])
    assert wrong.exit_code == 3 and "error:" in wrong.output
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.edgepkg").write_bytes(bytes(data))
    bad = CliRunner().invoke(cli.main, ["verify", str(tmp_path / "bad.edgepkg"), "--trust", str(tmp_path / "good.pub")])
    assert bad.exit_code == 3
    none = CliRunner().invoke(cli.main, ["verify", str(path)])
    assert none.exit_code == 3 and "no trusted keys" in none.output
    missing = CliRunner().invoke(cli.main, ["verify", str(path), "--trust", str(tmp_path / "nope.pub")])
    assert missing.exit_code == 2


def test_inspect_shows_the_manifest_and_whether_the_key_is_trusted(bundle, tmp_path: Path) -> None:
    path, key = bundle
    res = _run("inspect", str(path), "--json")
    data = json.loads(res.output)
    assert data["key_id"] == key.key_id and data["key_trusted_here"] is False
    assert data["manifest"]["format"] == 1
    (tmp_path / "k.pub").write_bytes(key.public_pem())
    _run("keys", "trust", str(tmp_path / "k.pub"))
    text = _run("inspect", str(path)).output
    assert "trusted here" in text and "NOT" not in text and "tensors" in text


def test_inspect_tables_piped_match_the_manifest(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = bundle
    monkeypatch.setenv("COLUMNS", "40")
    manifest = json.loads(_run("inspect", str(path), "--json").stdout)["manifest"]
    text = _run("inspect", str(path)).stdout
    for kind in ("inputs", "outputs"):
        for spec in manifest[kind]:
            _line_with(text, kind[:-1], spec["name"], spec["dtype"], str(spec["shape"]))
    for f in manifest["files"]:
        _line_with(text, f["path"], str(f["size"]), f["sha256"][:16])


def test_bench_runs_the_bundle_with_its_smoke_input(bundle, tmp_path: Path) -> None:
    path, key = bundle
    (tmp_path / "k.pub").write_bytes(key.public_pem())
    res = _run("bench", str(path), "--trust", str(tmp_path / "k.pub"), "--seconds", "0.05", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["p50_ms"] > 0 and data["iterations"] >= 10 and data["runtime"] == "onnxruntime"
    assert "peak_rss_mb" in data and data["host"]["machine"]


def test_keys_generate_list_trust(tmp_path: Path) -> None:
    res = _run("keys", "generate")
    assert res.exit_code == 0 and "generated key 'default'" in res.output
    again = CliRunner().invoke(cli.main, ["keys", "generate"])
    assert again.exit_code == 1 and "already exists" in again.output
    assert _run("keys", "generate", "--force").exit_code == 0
    other = generate_key("other", tmp_path / "elsewhere")
    kid = _run("keys", "trust", str(tmp_path / "elsewhere" / "other.pub")).output.split()[-1]
    assert kid == other.key_id
    listed = json.loads(_run("keys", "list", "--json").output)
    assert {(r["kind"], r["name"]) for r in listed} == {("signing", "default"), ("trusted", other.key_id)}


def test_targets_list_and_show(tmp_path: Path) -> None:
    data = json.loads(_run("targets", "list", "--json").output)
    assert {t["id"] for t in data} >= {"x86-cpu", "arm64-cpu", "jetson-orin", "intel-npu"}
    shown = json.loads(_run("targets", "show", "intel-npu", "--json").output)
    assert shown["static_shapes"] is True and shown["runtimes"] == ["openvino"]
    assert "openvino" in _run("targets", "show", "x86-cpu").output
    res = CliRunner().invoke(cli.main, ["targets", "show", "nope"])
    assert res.exit_code == 2 and "unknown target 'nope'" in res.output


def test_build_then_verify_then_inspect_for_real(tmp_path: Path) -> None:
    """No patching: the CLI builds a jetson bundle of a tiny CNN with a dynamic batch, end to end."""
    import numpy as np

    from tests.support.tiny_models import tiny_cnn

    model = tiny_cnn(tmp_path / "cnn.onnx", batch="N")
    np.savez(tmp_path / "cal.npz", input=np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32))
    out = tmp_path / "cnn.edgepkg"
    base = ["build", str(model), "-t", "jetson-orin", "-p", "fp32", "-c", str(tmp_path / "cal.npz"),
            "--bench-seconds", "0.05", "-o", str(out)]
    no_key = CliRunner().invoke(cli.main, base)
    assert no_key.exit_code == 1 and "edgeml keys generate" in no_key.output
    _run("keys", "generate")
    # jetson needs static shapes: the dynamic batch is fixed from the calibration samples (one row each)
    res = CliRunner().invoke(cli.main, [*base, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["chosen"] == "onnxruntime/fp32" and Path(report["bundle"]) == out
    assert report["data"]["dimensions"]["N"]["value"] == 1
    assert _run("verify", str(out)).exit_code == 0
    manifest = json.loads(_run("inspect", str(out), "--json").output)["manifest"]
    assert manifest["target"]["id"] == "jetson-orin" and manifest["inputs"][0]["shape"] == [1, 3, 16, 16]


def test_build_report_piped_to_a_log_keeps_each_candidate_on_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    # given a build with three candidates, one rejected with a long reason, reported into an 80-column pipe
    reason = "agreement 0.9132 is below 0.97 on output 'logits' (128 samples); retry with --fallback"
    candidates = [
        Candidate("onnxruntime", "fp32", status="passed", benchmark={"p50_ms": 1.25, "p99_ms": 2.5},
                  speedup=1.0, size_bytes=4_200_000, fidelity={"agreement": 1.0, "cosine": 1.0}),
        Candidate("onnxruntime", "int8", status="failed", reason=reason, speedup=2.05,
                  benchmark={"p50_ms": 0.61, "p99_ms": 0.9}, fidelity={"agreement": 0.9132, "cosine": 0.97001}),
        Candidate("openvino", "fp16", status="passed", benchmark={"p50_ms": 0.98, "p99_ms": 1.7},
                  speedup=1.28),
    ]
    report = BuildReport(model="models/resnet50-v1.5-imagenet.onnx", target="x86-cpu", precision="auto",
                         candidates=candidates, chosen=candidates[2], why="openvino/fp16 is the fastest",
                         baseline={"p50_ms": 1.25, "p99_ms": 2.5})
    monkeypatch.setattr(api, "compile", lambda *a, **k: api.BuildResult(tmp_path / "out.edgepkg", report))
    monkeypatch.setenv("COLUMNS", "80")
    # when the report is printed as a table and as JSON
    text = _run("build", "m.onnx", "-t", "x86-cpu").stdout
    data = json.loads(_run("build", "m.onnx", "-t", "x86-cpu", "--json").stdout)
    # then every candidate of the JSON is one table line: label, status, p50, speed-up and the whole reason
    assert len(data["candidates"]) == 3
    for cand in data["candidates"]:
        _line_with(text, f"{cand['runtime']}/{cand['precision']}", cand["status"],
                   f"{cand['benchmark']['p50_ms']:.3f}", f"{cand['speedup_vs_baseline']:.2f}x", cand["reason"])
    assert _line_with(text, "* openvino/fp16", "passed").startswith("* ")  # the chosen one is marked
    _line_with(text, "baseline (ort fp32)", "1.250", "source model, plain onnxruntime")
    assert f"chosen: {data['chosen']}" in text


def test_targets_list_piped_is_one_line_per_target_and_matches_its_json(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    # a real pipe, as in `edgeml targets list > file` or a CI log
    env = {**os.environ, "COLUMNS": "80", "EDGEML_HOME": str(tmp_path)}
    env.pop("EDGEML_TARGETS_PATH", None)

    def edgeml(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "edgeml.cli", "targets", "list", *args], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    text, targets = edgeml(), json.loads(edgeml("--json"))
    assert len(targets) >= 4
    for t in targets:
        line = _line_with(text, t["id"], ", ".join(t["runtimes"]), t["description"])
        assert line.startswith(t["id"] + " ")
    assert len(text.splitlines()) == 3 + len(targets)  # title, header, rule, one line per target


def test_keys_list_table_matches_its_json(tmp_path: Path) -> None:
    _run("keys", "generate", "--name", "release-signing-key-for-the-camera-fleet")
    rows = json.loads(_run("keys", "list", "--json").stdout)
    text = _run("keys", "list").stdout
    assert rows
    for row in rows:
        _line_with(text, row["kind"], row["name"], row["key_id"], row["path"])


def test_every_program_prints_the_same_version() -> None:
    from importlib.metadata import version

    from edgeml.fleet.cli import main as fleet_main
    from edgeml_agent.cli import main as agent_main

    expected = version("edgeml")
    programs = {"edgeml": cli.main, "edgeml-agent": agent_main, "edgeml-fleet": fleet_main}
    outputs = {name: CliRunner().invoke(group, ["--version"]).output.strip() for name, group in programs.items()}
    assert outputs == {name: f"{name}, version {expected}" for name in outputs}
