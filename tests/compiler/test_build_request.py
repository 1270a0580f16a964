"""BuildRequest: one validated home of every build default; compile() takes it or the same keywords."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgeml
from edgeml.compiler import api, plan
from edgeml.compiler.passes.base import get_pass
from edgeml.compiler.preprocess import Preprocess
from edgeml.compiler.request import CALIBRATION_METHODS, DEFAULT_GATE, BuildRequest, Thresholds
from edgeml.errors import ConfigError


@pytest.mark.parametrize(("options", "message"), [
    ({"precision": "int4"}, "must be one of fp32, fp16, int8, auto"),
    ({"calibration_method": "mean"}, "calibration method 'mean' must be minmax, entropy or percentile"),
    ({"version": "v1"}, "semantic version"),
    ({"min_cosine": "high"}, "threshold min_cosine must be a number"),
    ({"labels": "l.npy"}, "labels were given without samples"),
    ({"benchmark_seconds": 0}, "benchmark seconds must be > 0"),
    ({"preprocess": {"sise": [224, 224]}}, "preprocess key 'sise' is unknown"),
])
def test_a_bad_request_fails_when_it_is_made(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BuildRequest("m.onnx", "x86-cpu", **options)  # type: ignore[arg-type]


def test_the_request_is_the_home_of_gate_and_quantizer_defaults() -> None:
    request = BuildRequest("m.onnx", "x86-cpu", preprocess={"size": [32, 16]})
    assert request.thresholds == DEFAULT_GATE == Thresholds()
    assert request.quant_options == {"per_channel": False, "calibration_method": "minmax"}
    assert request.image_preprocess == Preprocess(size=(32, 16))
    assert request.bundle_name() == "m" and request.output_path("x86-cpu").name == "m-1.0.0-x86-cpu.edgepkg"
    # the quantizer takes its default method from the request module and validates against the same list
    assert get_pass("quantize_ort").defaults["calibration_method"] == request.calibration_method
    steps = plan.candidate_steps("onnxruntime", "int8", quant_options=request.quant_options)
    assert steps == [("quantize_ort", {"per_channel": False, "calibration_method": "minmax"})]
    for method in CALIBRATION_METHODS:
        get_pass("quantize_ort")(calibration_method=method)
    with pytest.raises(ConfigError, match="calibration_method must be one of minmax, entropy, percentile"):
        get_pass("quantize_ort")(calibration_method="mean")


def test_compile_takes_a_request_or_the_same_keywords(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[BuildRequest] = []

    def resolve(request: BuildRequest) -> None:
        seen.append(request)
        raise ConfigError("stop here")

    monkeypatch.setattr(api, "_resolve", resolve)
    request = BuildRequest(tmp_path / "m.onnx", "x86-cpu", precision="fp16", min_cosine=None)
    for call in (lambda: edgeml.compile(request),
                 lambda: edgeml.compile(tmp_path / "m.onnx", "x86-cpu", precision="fp16", min_cosine=None)):
        with pytest.raises(ConfigError, match="stop here"):
            call()
    assert seen == [request, request]
    with pytest.raises(TypeError, match="takes no other arguments"):
        edgeml.compile(request, "x86-cpu")
    with pytest.raises(TypeError, match="needs a target"):
        edgeml.compile(tmp_path / "m.onnx")
    with pytest.raises(TypeError):
        edgeml.compile(tmp_path / "m.onnx", "x86-cpu", min_cosin=0.9)  # type: ignore[call-arg]
