"""Run ``edgeml build`` as a user does: a fresh process, real flags, the JSON report on stdout.

The child imports this checkout's edgeml (the repository root leads its PYTHONPATH) and sees the test's
EDGEML_HOME / EDGEML_CACHE_DIR (set per test in tests/conftest.py), so its keys and cache are the test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.bundle import TrustStore, unpack_bundle

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 300


@dataclass(frozen=True)
class BuildRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        assert self.returncode == 0, f"edgeml build failed ({self.returncode}):\n{self.stderr[-3000:]}"
        data: dict[str, Any] = json.loads(self.stdout)
        return data


def child_env(extra_paths: list[Path] | None = None, **env: str) -> dict[str, str]:
    """This process's environment with ``extra_paths`` and the repository root first on PYTHONPATH."""
    merged = {**os.environ, **env}
    paths = [str(p) for p in extra_paths or []] + [str(ROOT), str(ROOT / "agent")]
    if merged.get("PYTHONPATH"):
        paths.append(merged["PYTHONPATH"])
    merged["PYTHONPATH"] = os.pathsep.join(paths)
    return merged


def edgeml_build(model: Path, *flags: str, env: dict[str, str] | None = None) -> BuildRun:
    """``edgeml build MODEL FLAGS --json`` with a short benchmark; returns exit code, stdout, stderr."""
    cmd = [sys.executable, "-m", "edgeml.cli", "build", str(model), *flags, "--bench-seconds", "0.05", "--json"]
    proc = subprocess.run(cmd, env=env or child_env(), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                          check=False)
    return BuildRun(proc.returncode, proc.stdout, proc.stderr)


def bundle_model(bundle: Path, dest: Path) -> tuple[dict[str, Any], Any]:
    """The manifest and the ONNX graph a bundle carries (signature and hashes checked, as a device does)."""
    import onnx

    vb = unpack_bundle(bundle, dest, TrustStore.default())
    return vb.manifest.raw, onnx.load(str(vb.model_path))


def provenance_step(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """The config a pass ran with, as the signed manifest's provenance records it."""
    step: dict[str, Any] = next(p for p in manifest["provenance"]["passes"] if p["name"] == name)
    return step


def initializers(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def dequantized(model: Any) -> dict[str, Any]:
    """DequantizeLinear nodes by the tensor they dequantize (``w1_quantized`` -> its node)."""
    return {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}


def node(model: Any, name: str) -> Any:
    return next(n for n in model.graph.node if n.name == name)
