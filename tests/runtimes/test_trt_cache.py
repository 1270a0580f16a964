"""TensorRT engine cache key: (model sha256, GPU compute capability, TensorRT version)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from edgeml.runtimes import probe
from edgeml.runtimes.base import BackendOptions
from edgeml.runtimes.onnxruntime_backend import TENSORRT_EP, engine_cache_dir, provider_arguments
from edgeml.runtimes.trt_cache import tensorrt_cache_dir, tensorrt_cache_key
from tests.support.tiny_models import tiny_mlp

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


def test_key_is_stable_and_changes_with_each_component():
    key = tensorrt_cache_key(SHA_A, "8.7", "8.6.2")
    assert key == tensorrt_cache_key(SHA_A, "8.7", "8.6.2")
    assert key.startswith("sm87-trt8.6.2-" + SHA_A[:12])
    others = {tensorrt_cache_key(SHA_B, "8.7", "8.6.2"), tensorrt_cache_key(SHA_A, "7.2", "8.6.2"),
              tensorrt_cache_key(SHA_A, "8.7", "10.3.0"), tensorrt_cache_key(SHA_A, None, None)}
    assert key not in others and len(others) == 4


def test_key_sanitises_odd_version_strings_and_rejects_bad_hashes(tmp_path):
    key = tensorrt_cache_key(SHA_A, "8.7", "10.3.0/../../x")
    assert "/" not in key and key not in (".", "..")       # one safe path component
    assert tensorrt_cache_dir(tmp_path, SHA_A, "8.7", "8.6.2").parent == tmp_path / "tensorrt"
    with pytest.raises(ValueError, match="64 lowercase hex"):
        tensorrt_cache_key("abc", "8.7", "8.6.2")


def _documented_key(model: Path, compute_capability: str, tensorrt_version: str) -> str:
    """The key as DESIGN.md and trt_cache.py describe it, written out here rather than called: readable
    ``sm<cc>-trt<version>-<sha256[:12]>`` plus 16 hex digits of sha256("<sha256>|<cc>|<version>")."""
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    digest = hashlib.sha256(f"{sha}|{compute_capability}|{tensorrt_version}".encode()).hexdigest()[:16]
    return f"sm{compute_capability.replace('.', '')}-trt{tensorrt_version}-{sha[:12]}-{digest}"


@pytest.mark.parametrize(("cc", "trt"), [("8.7", "8.6.2"), ("7.2", "8.5.2")])   # Orin / Xavier JetPacks
def test_tensorrt_provider_gets_an_engine_cache_under_the_key(tmp_path, monkeypatch, cc, trt):
    # the probe is the input here, fixed: what this host has must not decide the expected path
    monkeypatch.setattr(probe, "probe_host", lambda: replace(probe.probe_from(tmp_path / "no-gpu"),
                                                             cuda=True, gpu_compute_capability=cc,
                                                             tensorrt_version=trt))
    model = tiny_mlp(tmp_path / "m.onnx")
    options = BackendOptions(providers=(TENSORRT_EP, "CUDAExecutionProvider", "CPUExecutionProvider"),
                             provider_options={TENSORRT_EP: {"trt_fp16_enable": True}}, cache_dir=tmp_path / "c")
    args = provider_arguments(model, options, {TENSORRT_EP, "CPUExecutionProvider"})
    assert [p for p, _ in args] == [TENSORRT_EP, "CPUExecutionProvider"]   # CUDA absent: dropped, order kept
    expected = tmp_path / "c" / "tensorrt" / _documented_key(model, cc, trt)
    assert args[0][1] == {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                          "trt_engine_cache_path": str(expected)}
    assert expected.is_dir() and engine_cache_dir(model, tmp_path / "c") == expected
    # another model on the same GPU gets its own engines
    other = tiny_mlp(tmp_path / "other.onnx", seed=1)
    assert engine_cache_dir(other, tmp_path / "c") == tmp_path / "c" / "tensorrt" / _documented_key(other, cc, trt)


def test_explicit_engine_cache_path_is_kept(tmp_path):
    model = tiny_mlp(tmp_path / "m.onnx")
    options = BackendOptions(providers=(TENSORRT_EP,), provider_options={TENSORRT_EP: {"trt_engine_cache_path": "/x"}},
                             cache_dir=tmp_path)
    assert provider_arguments(model, options, {TENSORRT_EP})[0][1] == {"trt_engine_cache_path": "/x"}
