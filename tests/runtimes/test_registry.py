"""The runtime registry: one line per runtime, every runtime fact on its backend class.

A made-up runtime ("acmert", defined below) registered with one line is accepted by the bundle format and
the target profiles, found by the probe, offered its devices, chosen by the selection with its own
preference order and options, and loaded by ``open_model``: nothing else in edgeml names a runtime.
"""

from __future__ import annotations

import ast
import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeml import targets
from edgeml.bundle import Manifest
from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import BackendUnavailableError, ManifestError, MissingExtraError, TargetError
from edgeml.runtimes import RUNTIMES, Backend, BackendOptions, backend_class, open_model
from edgeml.runtimes.host import HostInfo
from edgeml.runtimes.probe import installed_runtimes
from edgeml.runtimes.registry import backend, backends
from edgeml.runtimes.selection import select_backend

ROOT = Path(__file__).resolve().parents[2]


class AcmeRtBackend(Backend):
    """A runtime that exists only in this test: two devices, the accelerator first."""

    runtime = "acmert"
    packages = (("no-such-acmert-dist", "acmert"), ("numpy", "numpy"))   # the second one is installed
    extra = "acmert"
    default_preferences = ("ACME_NPU", "ACME_CPU")
    cpu_devices = frozenset({"ACME_CPU"})
    device_kind = "cores"

    @classmethod
    def available_devices(cls) -> tuple[str, ...]:
        return ("ACME_CPU",)

    @classmethod
    def backend_options(cls, options: Mapping[str, Any], devices: Sequence[str],
                        base: BackendOptions) -> BackendOptions:
        return dataclasses.replace(base, device=devices[0], properties=dict(options.get("properties", {})))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("x", "float32", ("N", 2))]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("y", "float32", ("N", 2))]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": feeds["x"] * 2}


ACME = backend(f"{__name__}:AcmeRtBackend", "properties", "num_threads")   # the one registry line


def acme_profile() -> targets.TargetProfile:
    return targets.parse_profile({
        "id": "acme-board", "arch": ["x86_64"], "runtimes": ["acmert"], "precisions": ["fp32"], "max_opset": 17,
        "runtime": {"acmert": {"properties": {"TURBO": 1}}},
    }, "acme-board.toml")


def acme_manifest(target: Mapping[str, Any] | None = None) -> Manifest:
    return Manifest.from_dict({
        "format": 1, "name": "acme", "version": "1.0.0", "created": "2026-01-01T00:00:00+00:00",
        "target": dict(target or acme_profile().to_json()),
        "runtime": "acmert", "precision": "fp32", "model": "model/m.acme",
        "files": [{"path": "model/m.acme", "size": 1, "sha256": "0" * 64}],
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 2]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 2]}],
    })


def test_a_runtime_registered_with_one_line_is_probed_selected_and_loaded(monkeypatch, tmp_path):
    monkeypatch.setitem(RUNTIMES, "acmert", ACME)
    assert backend_class("acmert") is AcmeRtBackend
    assert installed_runtimes()["acmert"].startswith("numpy ")          # first installed package wins

    host = HostInfo(arch="x86_64", system="Linux", cpu_model="t", cpu_features=frozenset(), cpu_count=1,
                    memory_total_mb=1, memory_available_mb=1, runtimes={"acmert": "acmert 1"})
    sel = select_backend(acme_manifest(), host=host, devices_of=lambda r: backend_class(r).available_devices())
    assert (sel.runtime, sel.device, sel.fallback) == ("acmert", "ACME_CPU", True)   # its own CPU device
    assert sel.preferred == ("ACME_NPU", "ACME_CPU")                                 # its default order
    assert sel.discarded == ("acmert/ACME_NPU: ACME_NPU is not available here (acmert cores: ACME_CPU)",)
    assert sel.options.device == "ACME_CPU" and sel.options.properties == {"TURBO": 1}   # its options

    model = open_model(tmp_path / "m.acme", "acmert", sel.options)
    assert isinstance(model, AcmeRtBackend)
    np.testing.assert_array_equal(model.run({"x": np.ones((1, 2), np.float32)})["y"], [[2, 2]])


def test_the_registry_line_is_what_the_bundle_format_and_the_profiles_accept(monkeypatch):
    with pytest.raises(ManifestError, match="runtime 'acmert' is not one of"):
        acme_manifest({"id": "acme-board"})
    with pytest.raises(TargetError, match="unknown value 'acmert'"):
        acme_profile()
    monkeypatch.setitem(RUNTIMES, "acmert", ACME)
    assert acme_manifest().runtime == "acmert"
    assert acme_profile().options("acmert").properties == {"TURBO": 1}
    with pytest.raises(TargetError, match=r"'runtime\.acmert\.providers' is not a known key"):
        targets.parse_profile({"id": "a", "arch": ["x86_64"], "runtimes": ["acmert"], "precisions": ["fp32"],
                               "max_opset": 17, "runtime": {"acmert": {"providers": []}}}, "a.toml")


def test_an_alias_is_accepted_by_the_format_and_the_agent_says_which_runtime_runs_it():
    profile = targets.parse_profile({
        "id": "trt", "arch": ["x86_64"], "runtimes": ["tensorrt"], "precisions": ["fp16"], "max_opset": 17,
        "runtime": {"tensorrt": {"provider_options": {"TensorrtExecutionProvider": {"trt_fp16_enable": True}}}},
    }, "trt.toml")
    manifest = Manifest.from_dict({
        "format": 1, "name": "trt", "version": "1.0.0", "created": "2026-01-01T00:00:00+00:00",
        "target": profile.to_json(), "runtime": "tensorrt", "precision": "fp16", "model": "model/m.onnx",
        "files": [{"path": "model/m.onnx", "size": 1, "sha256": "0" * 64}],
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1]}],
    })
    assert "tensorrt" not in backends()
    host = HostInfo(arch="x86_64", system="Linux", cpu_model="t", cpu_features=frozenset(), cpu_count=1,
                    memory_total_mb=1, memory_available_mb=1, runtimes={"onnxruntime": "onnxruntime 1"})
    with pytest.raises(BackendUnavailableError, match="build the bundle for runtime 'onnxruntime'"):
        select_backend(manifest, host=host, devices_of=lambda r: ("CPUExecutionProvider",))


def test_a_missing_runtime_names_the_extra_its_class_declares(monkeypatch):
    monkeypatch.setitem(RUNTIMES, "acmert", ACME)
    host = HostInfo(arch="x86_64", system="Linux", cpu_model="t", cpu_features=frozenset(), cpu_count=1,
                    memory_total_mb=1, memory_available_mb=1, runtimes={})
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edgeml\[acmert\]'"):
        select_backend(acme_manifest(), host=host, devices_of=lambda r: ())


def test_a_runtime_sdk_is_the_first_of_its_packages_that_imports_else_its_extra_is_named():
    assert AcmeRtBackend.import_sdk() is np                     # "acmert" does not import, numpy does

    class Missing(AcmeRtBackend):
        packages = (("no-such-acmert-dist", "acmert"),)

    with pytest.raises(MissingExtraError, match=r"'no-such-acmert-dist' is not installed .*edgeml\[acmert\]"):
        Missing.import_sdk()


@pytest.mark.parametrize("runtime", sorted(backends()))
def test_every_registered_runtime_declares_its_facts(runtime):
    cls = backend_class(runtime)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert cls.runtime == runtime
    assert cls.packages and cls.extra in extras, f"{runtime}: declare its packages and an extra in pyproject.toml"
    assert cls.default_preferences and set(cls.default_preferences) <= cls.cpu_devices


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_every_registry_entry_is_a_backend_or_an_alias_with_profile_keys_the_loader_keeps(runtime):
    entry = RUNTIMES[runtime]
    assert bool(entry.backend) != bool(entry.alias_of), "a backend path or an alias, not both"
    assert not entry.alias_of or entry.alias_of in backends()
    # A profile key that RuntimeOptions has no field for would be accepted and then dropped.
    assert entry.profile_keys <= {f.name for f in dataclasses.fields(targets.RuntimeOptions)}


def test_nothing_outside_the_backends_and_the_registry_names_a_runtime():
    """Probe, selection, base class, bundle format and profile loader are runtime-agnostic: a runtime's
    facts live in its backend module and its one line in the registry, so adding one touches nothing else."""
    names = set(RUNTIMES)
    for module in ("runtimes/base", "runtimes/probe", "runtimes/selection", "runtimes/host", "runtimes/__init__",
                   "bundle/manifest", "targets"):
        tree = ast.parse((ROOT / "edgeml" / f"{module}.py").read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        if module == "runtimes/probe":
            strings.discard("tensorrt")   # the TensorRT library's distribution, a hardware fact like libnvinfer
        assert not names & strings, f"edgeml/{module}.py names a runtime: {sorted(names & strings)}"
