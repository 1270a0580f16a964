"""Backend selection: a chain of filters with a reason for every discarded candidate."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from edgeml.bundle import Manifest
from edgeml.errors import BackendUnavailableError
from edgeml.runtimes.probe import HostInfo, probe_host
from edgeml.runtimes.selection import SelectionPolicy, preferences, select_backend
from edgeml.targets import get_target

TRT, CUDA, CPU_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def manifest(target: str | dict[str, Any], runtime: str | None = None, **extra: Any) -> Manifest:
    tgt = get_target(target).to_json() if isinstance(target, str) else target
    return Manifest.from_dict({
        "format": 1, "name": "m", "version": "1.0.0", "created": "2026-01-01T00:00:00+00:00", "target": tgt,
        "runtime": runtime or tgt["runtimes"][0], "precision": "fp32", "model": "model/m.onnx",
        "files": [{"path": "model/m.onnx", "size": 1, "sha256": "0" * 64}],
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 3]}], **extra,
    })


def host(**changes: Any) -> HostInfo:
    base = HostInfo(arch="x86_64", system="Linux", cpu_model="test", cpu_features=frozenset(), cpu_count=2,
                    memory_total_mb=4096, memory_available_mb=2048,
                    runtimes={"onnxruntime": "onnxruntime 1", "openvino": "openvino 1", "litert": "ai-edge-litert 1"})
    return dataclasses.replace(base, **changes)


CPU_ONLY = {"onnxruntime": (CPU_EP,), "openvino": ("CPU",), "litert": ("CPU",)}
JETSON = {"onnxruntime": (TRT, CUDA, CPU_EP), "openvino": (), "litert": ("CPU",)}
JETSON_HOST = host(arch="aarch64", cuda=True, gpu_compute_capability="8.7", tensorrt_version="8.6.2",
                   jetson_l4t="R36 (release), REVISION: 3.0")


def test_jetson_bundle_on_a_jetson_uses_tensorrt_then_cuda_then_cpu():
    sel = select_backend(manifest("jetson-orin"), host=JETSON_HOST, devices_of=JETSON.__getitem__)
    assert (sel.runtime, sel.device, sel.fallback) == ("onnxruntime", TRT, False)
    assert sel.options.providers == (TRT, CUDA, CPU_EP)
    assert sel.options.provider_options[TRT]["trt_fp16_enable"] is True
    assert sel.discarded == ()


def test_jetson_bundle_on_a_cpu_only_host_is_refused_with_every_reason():
    m = manifest("jetson-orin")
    with pytest.raises(BackendUnavailableError) as err:
        select_backend(m, host=host(), devices_of=CPU_ONLY.__getitem__)
    reasons = err.value.reasons
    assert len(reasons) == 3 and all("jetson-orin" in r and "aarch64" in r for r in reasons)  # arch first
    with pytest.raises(BackendUnavailableError) as err:
        select_backend(m, SelectionPolicy(allow_other_arch=True), host=host(), devices_of=CPU_ONLY.__getitem__)
    text = str(err.value)
    assert "TensorRT is not installed" in text and "no NVIDIA GPU/CUDA" in text
    assert ("falling back from TensorrtExecutionProvider to the CPU is not allowed by target profile "
            "'jetson-orin'") in text
    assert "cpu_fallback = true" in text        # says what to do


def test_jetson_bundle_runs_on_cpu_with_reported_fallback_when_config_allows(caplog):
    policy = SelectionPolicy(cpu_fallback=True, allow_other_arch=True)
    with caplog.at_level(logging.WARNING, "edgeml.selection"):
        sel = select_backend(manifest("jetson-orin"), policy, host=host(), devices_of=CPU_ONLY.__getitem__)
    assert (sel.device, sel.fallback, sel.options.providers) == (CPU_EP, True, (CPU_EP,))
    assert "TensorRT is not installed" in (sel.fallback_reason or "")
    assert "CPU fallback" in caplog.text


def test_intel_npu_bundle_falls_back_through_its_device_list_on_the_real_host():
    """On this CPU-only host (real probe): NPU and GPU are discarded, the profile allows the CPU."""
    sel = select_backend(manifest("intel-npu"))
    assert (sel.runtime, sel.device, sel.fallback) == ("openvino", "CPU", True)
    assert sel.options.device == "CPU" and sel.options.properties == {"PERFORMANCE_HINT": "LATENCY"}
    assert [r.split(":")[0] for r in sel.discarded] == ["openvino/NPU", "openvino/GPU"]
    assert sel.to_json()["fallback"] is True


def test_intel_npu_bundle_is_refused_when_the_agent_config_forbids_fallback():
    with pytest.raises(BackendUnavailableError) as err:
        select_backend(manifest("intel-npu"), SelectionPolicy(cpu_fallback=False))
    assert [r.split(":")[0] for r in err.value.reasons] == ["openvino/NPU", "openvino/GPU", "openvino/CPU"]
    assert "not allowed by the agent config" in err.value.reasons[2]


def test_openvino_auto_uses_the_explicit_fallback_list_that_survives():
    target = get_target("intel-npu").to_json()
    target["runtime"]["openvino"] = {"device": "AUTO", "fallback_devices": ["NPU", "GPU", "CPU"]}
    m = manifest(target)
    assert preferences(m) == ("NPU", "GPU", "CPU")
    sel = select_backend(m, host=host(), devices_of={"openvino": ("GPU", "CPU")}.__getitem__)
    assert sel.options.device == "AUTO:GPU,CPU" and sel.device == "GPU" and not sel.fallback


def test_manifest_preferences_override_the_profile_and_missing_runtime_says_what_to_install():
    m = manifest("x86-cpu", runtime_preferences=[CUDA, CPU_EP])
    assert preferences(m) == (CUDA, CPU_EP)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edgeml\[onnxruntime\]'"):
        select_backend(m, host=host(runtimes={}), devices_of=lambda r: ())


def test_runtime_not_listed_by_the_target_is_refused():
    with pytest.raises(BackendUnavailableError, match="does not list runtime 'litert'"):
        select_backend(manifest("x86-cpu", runtime="litert"), host=host(), devices_of=CPU_ONLY.__getitem__)


def test_threads_come_from_policy_then_profile():
    target = get_target("arm64-cpu").to_json()
    target["runtime"]["litert"] = {"num_threads": 3}
    m = manifest(target, runtime="litert")
    h = host(arch="aarch64")
    assert select_backend(m, host=h, devices_of=CPU_ONLY.__getitem__).options.num_threads == 3
    assert select_backend(m, SelectionPolicy(num_threads=1), host=h,
                          devices_of=CPU_ONLY.__getitem__).options.num_threads == 1


def test_real_host_runs_an_x86_bundle_without_fallback():
    sel = select_backend(manifest("x86-cpu"))
    assert probe_host().arch == "x86_64"
    assert (sel.device, sel.fallback, sel.discarded) == (CPU_EP, False, ())
