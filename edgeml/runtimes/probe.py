"""What this host can run, probed once and frozen.

Which runtimes exist and how to ask each for its devices come from the registry
(:mod:`edgeml.runtimes.registry`) and the backend classes; this module adds only the hardware facts.

Hardware facts (architecture, CPU features, memory, CUDA/TensorRT/Jetson presence) come from files and
library names only, so the probe is cheap and never imports a runtime. The devices a runtime offers
(ONNX Runtime providers, OpenVINO devices) need that runtime imported; they are probed on first ask,
per runtime, and cached, so an agent serving an ONNX model never pays for importing OpenVINO.
"""

from __future__ import annotations

import functools
import glob
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
from pathlib import Path

from edgeml.jsontypes import JSONDict
from edgeml.runtimes.base import backend_class
from edgeml.runtimes.host import HostInfo
from edgeml.runtimes.registry import backends

__all__ = ["HostInfo", "full_probe", "installed_runtimes", "parse_cpuinfo", "parse_l4t", "parse_meminfo",
           "probe_from", "probe_host", "runtime_devices"]

# -- parsing (pure functions, tested with sample files) ------------------------------------------------

def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """CPU model name and feature flags: x86 'flags', ARM 'Features'."""
    model, features = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not features:
            features = frozenset(value.split())
    return model, features


def parse_meminfo(text: str) -> tuple[int, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) // 1024
    total = values.get("MemTotal", 0)
    return total, values.get("MemAvailable", values.get("MemFree", total))


def parse_l4t(text: str) -> str | None:
    """``/etc/nv_tegra_release`` first line: '# R36 (release), REVISION: 3.0, GCID: ..., BOARD: ...'."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = first.lstrip("# ").strip()
    if not first.startswith("R"):
        return None
    return ", ".join(first.split(", ")[:2])


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_runtimes() -> dict[str, str]:
    """Registered runtimes whose package is installed here, with the distribution found (first one wins)."""
    found: dict[str, str] = {}
    for runtime in backends():
        for dist, module in backend_class(runtime).packages:
            version = _dist_version(dist)
            if version and importlib.util.find_spec(module) is not None:
                found[runtime] = f"{dist} {version}"
                break
    return found


def _tensorrt_version(root: Path) -> str | None:
    version = _dist_version("tensorrt") or _dist_version("tensorrt-libs")
    if version:
        return version
    # JetPack installs TensorRT as system libraries: libnvinfer.so.<major>.<minor>.<patch>
    libs = sorted(glob.glob(str(root / "usr/lib/*/libnvinfer.so.*.*.*")))
    return libs[-1].rsplit("libnvinfer.so.", 1)[1] if libs else None


def _compute_capability(root: Path, l4t: str | None) -> str | None:
    smi = shutil.which("nvidia-smi") if root == Path("/") else None
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False).stdout.strip()
            if out:
                return out.splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    if l4t:
        # Jetson has no nvidia-smi on older JetPacks; the SoC fixes the capability.
        compatible = _read(root / "proc/device-tree/compatible")
        for soc, cc in (("tegra234", "8.7"), ("tegra194", "7.2"), ("tegra186", "6.2"), ("tegra210", "5.3")):
            if soc in compatible:
                return cc
    return None


def probe_from(root: Path = Path("/")) -> HostInfo:
    """Probe a filesystem root (``/`` normally; tests pass a fake tree)."""
    model, features = parse_cpuinfo(_read(root / "proc/cpuinfo"))
    total, available = parse_meminfo(_read(root / "proc/meminfo"))
    l4t_text = _read(root / "etc/nv_tegra_release")
    l4t = parse_l4t(l4t_text) if l4t_text else None
    cuda = bool(l4t) or (root / "dev/nvidia0").exists() or bool(glob.glob(str(root / "usr/lib/*/libcuda.so*")))
    return HostInfo(
        arch=platform.machine(),
        system=platform.system(),
        cpu_model=model or platform.processor(),
        cpu_features=features,
        cpu_count=os.cpu_count() or 1,
        memory_total_mb=total,
        memory_available_mb=available,
        runtimes=installed_runtimes(),
        cuda=cuda,
        gpu_compute_capability=_compute_capability(root, l4t) if cuda else None,
        tensorrt_version=_tensorrt_version(root) if cuda else None,
        jetson_l4t=l4t,
    )


@functools.cache
def probe_host() -> HostInfo:
    """The host probe, computed once per process."""
    return probe_from(Path("/"))


@functools.cache
def runtime_devices(runtime: str) -> tuple[str, ...]:
    """Devices a runtime offers here: ORT execution providers, OpenVINO devices, LiteRT's 'CPU'.

    Empty when the runtime is not installed (or not registered). Asks the backend class, which imports
    the runtime; the answer is cached, so that happens once per runtime and process.
    """
    if runtime not in probe_host().runtimes:
        return ()
    return tuple(backend_class(runtime).available_devices())


def full_probe() -> JSONDict:
    """Everything, for ``edgeml-agent status``: imports every installed runtime."""
    data = probe_host().to_json()
    data["devices"] = {r: list(runtime_devices(r)) for r in probe_host().runtimes}
    return data
