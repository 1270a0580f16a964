"""What the probe found about this host, as frozen data (filled in by :mod:`edgeml.runtimes.probe`).

Its own module so that backends can read host facts (a GPU, a TensorRT version) in their class methods
without importing the probe, which imports the backends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgeml.jsontypes import JSONDict, to_json


@dataclass(frozen=True)
class HostInfo:
    arch: str                                   # platform.machine(): x86_64, aarch64, ...
    system: str
    cpu_model: str
    cpu_features: frozenset[str]
    cpu_count: int
    memory_total_mb: int
    memory_available_mb: int                    # at probe time
    runtimes: dict[str, str] = field(default_factory=dict)   # installed runtime -> "package version"
    cuda: bool = False
    gpu_compute_capability: str | None = None   # e.g. "8.7" (Orin), None without an NVIDIA GPU
    tensorrt_version: str | None = None
    jetson_l4t: str | None = None               # e.g. "R36 (release), REVISION: 3.0"

    def to_json(self) -> JSONDict:
        data = asdict(self)
        data["cpu_features"] = sorted(self.cpu_features)
        return {key: to_json(value) for key, value in data.items()}
