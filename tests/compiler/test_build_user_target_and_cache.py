"""A target profile the user drops into a profile directory drives a real ``edgeml build``; and the
content-addressed build cache serves an unchanged model again but never an edited model's old result."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeml.fileio import sha256_file
from edgeml.targets import load_profile_file
from tests.compiler.cli_build import bundle_model, child_env, edgeml_build, initializers
from tests.support.tiny_models import tiny_cnn

LAB_BOARD = """\
# a user's own board: ONNX Runtime only, float only, a small memory budget
id = "lab-board"
description = "lab test board"
arch = ["x86_64"]
runtimes = ["onnxruntime"]
precisions = ["fp32", "fp16"]
max_opset = 17
memory_budget_mb = 512

[runtime.onnxruntime]
providers = ["CPUExecutionProvider"]
num_threads = 1
"""


def test_build_for_a_target_profile_dropped_into_a_user_directory(cnn, cnn_data, default_key, tmp_path,
                                                                  isolated_edgeml_home) -> None:
    profiles = tmp_path / "my-targets"                           # a directory named in EDGEML_TARGETS_PATH
    profiles.mkdir()
    (profiles / "lab-board.toml").write_text(LAB_BOARD)
    (isolated_edgeml_home / "targets").mkdir()                   # and the one under EDGEML_HOME
    (isolated_edgeml_home / "targets" / "old-board.toml").write_text(
        LAB_BOARD.replace("lab-board", "old-board").replace("max_opset = 17", "max_opset = 13"))
    env = child_env(EDGEML_TARGETS_PATH=str(profiles))
    out = tmp_path / "lab.edgepkg"
    report = edgeml_build(cnn, "-t", "lab-board", "-c", str(cnn_data), "-o", str(out), env=env).report
    # auto builds exactly what the profile allows: its one runtime, its two precisions
    assert {f"{c['runtime']}/{c['precision']}" for c in report["candidates"]} == {"onnxruntime/fp32",
                                                                                   "onnxruntime/fp16"}
    assert report["target"] == "lab-board" and report["chosen"] in ("onnxruntime/fp32", "onnxruntime/fp16")
    manifest, _ = bundle_model(out, tmp_path / "u")
    assert manifest["target"] == load_profile_file(profiles / "lab-board.toml").to_json()
    assert manifest["target"]["memory_budget_mb"] == 512
    # the profile's limits bind the build: tiny_cnn is opset 17, above old-board's maximum
    refused = edgeml_build(cnn, "-t", "old-board", "-p", "fp32", "-o", str(tmp_path / "old.edgepkg"), env=env)
    assert refused.returncode != 0 and "opset 17 is above target old-board's maximum 13" in refused.stderr
    # without the directory on the path the target does not exist
    unknown = edgeml_build(cnn, "-t", "lab-board", "-p", "fp32", "-o", str(tmp_path / "x.edgepkg"))
    assert unknown.returncode == 2 and "lab-board" in unknown.stderr


def _cached(report: dict[str, Any]) -> dict[str, bool]:
    """Which cacheable steps (load, check, optimize, quantize_ort) the build took from the cache."""
    steps = report["data"]["prefix_steps"] + report["candidates"][0]["steps"]
    return {s["name"]: s["cached"] for s in steps if s["name"] in ("load", "check", "optimize", "quantize_ort")}


def test_rebuild_hits_the_cache_until_the_model_file_changes(cnn_data, default_key, tmp_path) -> None:
    model = tiny_cnn(tmp_path / "model.onnx", seed=0)
    env = child_env(EDGEML_CACHE_DIR=str(tmp_path / "cache"))   # an empty cache of this test's own
    flags = ("-t", "x86-cpu", "-p", "int8", "--runtime", "onnxruntime", "-c", str(cnn_data))

    def build(n: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
        out = tmp_path / f"b{n}.edgepkg"
        report = edgeml_build(model, *flags, "-o", str(out), env=env).report
        manifest, graph = bundle_model(out, tmp_path / f"u{n}")
        return report, manifest, initializers(graph)

    first, m1, w1 = build(1)
    assert set(_cached(first).values()) == {False}
    again, m2, w2 = build(2)
    assert _cached(again) == dict.fromkeys(("load", "check", "optimize", "quantize_ort"), True)
    assert m2["provenance"]["source_sha256"] == m1["provenance"]["source_sha256"] == sha256_file(model)
    assert np.array_equal(w2["w1_quantized"], w1["w1_quantized"])

    old_sha = sha256_file(model)
    tiny_cnn(model, seed=1)                                     # same path, same shapes, new weights
    changed, m3, w3 = build(3)
    assert set(_cached(changed).values()) == {False}
    assert m3["provenance"]["source_sha256"] == sha256_file(model) != old_sha
    assert not np.array_equal(w3["w1_quantized"], w1["w1_quantized"])   # the new weights, not the cached ones
