"""The runtime registry: one line per runtime, every runtime fact on its backend class.

A made-up runtime ("acmert", defined below) registered with one line is found by the probe, offered its
devices, chosen by the selection with its own preference order and options, and loaded by ``open_model``:
nothing else in edgeml.runtimes names a runtime.
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
from edgeml.bundle import manifest as manifest_module
from edgeml.bundle.manifest import TensorSpec
from edgeml.errors import BackendUnavailableError
from edgeml.runtimes import BACKENDS, Backend, BackendOptions, backend_class, open_model
from edgeml.runtimes.host import HostInfo
from edgeml.runtimes.probe import installed_runtimes
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
        return dataclasses.replace(base, device=devices[0], properties=dict(options.get("knobs", {})))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("x", "float32", ("N", 2))]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("y", "float32", ("N", 2))]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": feeds["x"] * 2}


def acme_manifest() -> Manifest:
    m = Manifest.from_dict({
        "format": 1, "name": "acme", "version": "1.0.0", "created": "2026-01-01T00:00:00+00:00",
        "target": {"id": "acme-board", "arch": [], "runtimes": ["onnxruntime"], "cpu_fallback": True,
                   "runtime": {"acmert": {"knobs": {"TURBO": 1}}}},
        "runtime": "onnxruntime", "precision": "fp32", "model": "model/m.acme",
        "files": [{"path": "model/m.acme", "size": 1, "sha256": "0" * 64}],
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 2]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 2]}],
    })
    # The bundle format lists the runtimes it knows (edgeml.bundle.manifest.RUNTIMES); a test runtime is
    # not one of them, so its manifest is edited after validation.
    m.raw["runtime"] = "acmert"
    m.raw["target"]["runtimes"] = ["acmert"]
    return m


def test_a_runtime_registered_with_one_line_is_probed_selected_and_loaded(monkeypatch, tmp_path):
    monkeypatch.setitem(BACKENDS, "acmert", f"{__name__}:AcmeRtBackend")
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


def test_a_missing_runtime_names_the_extra_its_class_declares(monkeypatch):
    monkeypatch.setitem(BACKENDS, "acmert", f"{__name__}:AcmeRtBackend")
    host = HostInfo(arch="x86_64", system="Linux", cpu_model="t", cpu_features=frozenset(), cpu_count=1,
                    memory_total_mb=1, memory_available_mb=1, runtimes={})
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edgeml\[acmert\]'"):
        select_backend(acme_manifest(), host=host, devices_of=lambda r: ())


@pytest.mark.parametrize("runtime", sorted(BACKENDS))
def test_every_registered_runtime_declares_its_facts_and_is_known_to_the_bundle_format(runtime):
    cls = backend_class(runtime)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert cls.runtime == runtime
    assert cls.packages and cls.extra in extras, f"{runtime}: declare its packages and an extra in pyproject.toml"
    assert cls.default_preferences and set(cls.default_preferences) <= cls.cpu_devices
    # The bundle format and the target profiles name the runtimes a bundle may carry.
    assert runtime in manifest_module.RUNTIMES and runtime in targets.RUNTIMES


def test_nothing_in_runtimes_outside_the_backends_names_a_runtime():
    """Probe, selection, registry lookups and the base class are runtime-agnostic: a runtime's facts live
    in its backend module (and its one line in the registry), so adding one touches nothing else."""
    names = set(BACKENDS)
    for module in ("base", "probe", "selection", "host", "__init__"):
        tree = ast.parse((ROOT / "edgeml/runtimes" / f"{module}.py").read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not names & strings, f"edgeml/runtimes/{module}.py names a runtime: {sorted(names & strings)}"
