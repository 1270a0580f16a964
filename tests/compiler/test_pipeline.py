from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from edgeml.compiler import plan
from edgeml.compiler.data import random_samples
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass
from edgeml.compiler.pipeline import StepRecord, build_cache_root, run_steps
from edgeml.errors import CompileError, ConfigError
from edgeml.targets import get_target
from tests.support.tiny_models import tiny_cnn


class _CountingCopy(Pass):
    """A test pass that copies the model and counts its runs (a seam for the cache)."""

    name = "test_counting_copy"
    runs: ClassVar[int] = 0
    uses_calibration: ClassVar[bool] = False

    def run(self, artifact: Artifact, ctx: BuildContext) -> Artifact:
        type(self).runs += 1
        out = ctx.workdir / "copy.onnx"
        out.write_bytes(artifact.path.read_bytes())
        return artifact.evolve(path=out, metadata={**artifact.metadata, "tag": self.config.get("tag")})


class _DataDependent(_CountingCopy):
    name = "test_data_dependent"
    runs: ClassVar[int] = 0
    uses_calibration: ClassVar[bool] = True


def _source(tmp_path: Path) -> Artifact:
    from edgeml.compiler.modelinfo import digest_files

    path = tiny_cnn(tmp_path / "cnn.onnx")
    return Artifact(path=path, format="onnx", precision="fp32", digest=digest_files([path]))


def test_cache_hits_on_rebuild_and_reruns_only_changed_steps(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEML_CACHE_DIR", str(tmp_path / "cache"))  # other tests share the session cache
    ctx = BuildContext(target=get_target("x86-cpu"), workdir=tmp_path)
    src = _source(tmp_path)
    _CountingCopy.runs = 0
    steps = [("load", {}), ("test_counting_copy", {"tag": "a"})]
    first: list[StepRecord] = []
    out1 = run_steps(src, steps, ctx, scratch=tmp_path, records=first)
    assert [r.cached for r in first] == [False, False] and _CountingCopy.runs == 1
    assert out1.path.is_relative_to(build_cache_root()) and out1.metadata["tag"] == "a"
    assert [p["name"] for p in out1.metadata["passes"]] == ["load", "test_counting_copy"]

    second: list[StepRecord] = []
    out2 = run_steps(src, steps, ctx, scratch=tmp_path, records=second)
    assert [r.cached for r in second] == [True, True] and _CountingCopy.runs == 1
    assert out2.path == out1.path

    third: list[StepRecord] = []
    out3 = run_steps(src, [("load", {}), ("test_counting_copy", {"tag": "b"})], ctx, scratch=tmp_path, records=third)
    assert [r.cached for r in third] == [True, False] and _CountingCopy.runs == 2
    assert out3.metadata["tag"] == "b"


def test_data_dependent_steps_rerun_when_the_calibration_data_changes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEML_CACHE_DIR", str(tmp_path / "cache"))
    ctx = BuildContext(target=get_target("x86-cpu"), workdir=tmp_path)
    src = _source(tmp_path)
    specs = [__import__("edgeml.bundle", fromlist=["TensorSpec"]).TensorSpec("input", "float32", (1, 3, 16, 16))]
    _DataDependent.runs = 0
    for seed, expected in ((0, 1), (0, 1), (1, 2)):
        ctx.calibration = random_samples(specs, 2, seed=seed)
        run_steps(src, [("load", {}), ("test_data_dependent", {})], ctx, scratch=tmp_path)
        assert _DataDependent.runs == expected


def test_use_cache_false_runs_everything_in_scratch(tmp_path: Path) -> None:
    ctx = BuildContext(target=get_target("x86-cpu"), workdir=tmp_path)
    out = run_steps(_source(tmp_path), [("load", {})], ctx, scratch=tmp_path / "s", use_cache=False)
    assert out.path.is_relative_to(tmp_path / "s")


def test_unknown_pass_names_the_known_ones(tmp_path: Path) -> None:
    ctx = BuildContext(target=get_target("x86-cpu"), workdir=tmp_path)
    with pytest.raises(CompileError, match=r"unknown pass 'nope'; known: .*load"):
        run_steps(_source(tmp_path), [("nope", {})], ctx, scratch=tmp_path)


@pytest.mark.parametrize(("step", "known"), [
    ("load", "input_shapes"), ("check", "runtimes"), ("optimize", "level"),
    ("benchmark", "seconds, warmup, max_iters, threads"), ("package", "name, version, output, key, compression"),
])
def test_a_misspelt_pass_option_is_refused_with_the_known_ones(tmp_path: Path, step: str, known: str) -> None:
    ctx = BuildContext(target=get_target("x86-cpu"), workdir=tmp_path)
    with pytest.raises(ConfigError, match=rf"pass '{step}' has no option 'levle' \(known: {known}\)"):
        run_steps(_source(tmp_path), [(step, {"levle": 1})], ctx, scratch=tmp_path, use_cache=False)


def test_plan_rows_carry_exclusions_and_quantizer_options() -> None:
    steps = plan.candidate_steps("onnxruntime", "int8", exclude_nodes=["b", "a", "a"], exclude_op_types=["Gemm"],
                                 quant_options={"per_channel": True, "preset": "mixed"})
    assert steps == [("quantize_ort", {"per_channel": True, "calibration_method": "minmax",
                                       "exclude_nodes": ["a", "b"], "exclude_op_types": ["Gemm"]})]
    ov = plan.candidate_steps("openvino", "int8", exclude_nodes=["a"], quant_options={"preset": "mixed"})
    assert ov == [("convert_openvino", {}), ("quantize_nncf", {"preset": "mixed", "ignored_names": ["a"]})]
    assert plan.quantizer_index(ov) == 1 and plan.quantizer_index(plan.candidate_steps("openvino", "fp32")) is None
    assert not plan.has_plan("tensorrt", "int8")
    assert plan.prefix_steps({"x": (1, 2)}, ["openvino"])[0] == ("load", {"input_shapes": {"x": [1, 2]}})


def test_every_plan_row_names_registered_passes() -> None:
    from edgeml.compiler.passes.base import get_pass

    for steps in plan.PLANS.values():
        for name, config in steps:
            get_pass(name)(**config)  # constructs: the row's config is valid for the pass
