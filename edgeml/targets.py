"""Target profiles: what a kind of device can run, as validated, frozen data.

Profiles are TOML files. The built-in ones ship in ``targets/`` (package ``edgeml.target_profiles``);
users add or override one by dropping ``<id>.toml`` into a profile directory (see
:func:`edgeml.paths.user_target_dirs`). Unknown keys and bad values are errors that name the file and
the key, because a typo in a profile silently changing a build is worse than a failed build.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from edgeml.errors import TargetError
from edgeml.jsontypes import JSONDict, to_json
from edgeml.paths import user_target_dirs
from edgeml.runtimes.registry import RUNTIMES
from edgeml.tomlsection import TomlSection

PRECISIONS = ("fp32", "fp16", "int8")
ARCHES = ("x86_64", "aarch64", "armv7l")
ORT_PROVIDERS = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider",
)
OPENVINO_DEVICES = ("NPU", "GPU", "CPU", "AUTO")


@dataclass(frozen=True)
class RuntimeOptions:
    """Per-runtime settings of a profile. Only the keys that make sense for that runtime are allowed."""

    providers: tuple[str, ...] = ()                       # onnxruntime: execution providers in order
    provider_options: Mapping[str, Mapping[str, object]] = field(default_factory=lambda: MappingProxyType({}))
    device: str | None = None                             # openvino: preferred device
    fallback_devices: tuple[str, ...] = ()                # openvino: tried in order if `device` is absent
    properties: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))  # openvino compile props
    num_threads: int = 0                                  # litert / onnxruntime: 0 = runtime default


@dataclass(frozen=True)
class TargetProfile:
    id: str
    description: str
    arch: tuple[str, ...]
    runtimes: tuple[str, ...]          # in preference order
    precisions: tuple[str, ...]        # allowed precisions, preferred first
    max_opset: int
    static_shapes: bool
    memory_budget_mb: int
    cpu_fallback: bool                 # may the agent fall back from an accelerator to the CPU
    runtime: Mapping[str, RuntimeOptions]
    source: str                        # file it was loaded from

    def options(self, runtime: str) -> RuntimeOptions:
        return self.runtime.get(runtime, RuntimeOptions())

    def to_json(self) -> JSONDict:
        """The constraints copied into a bundle's manifest."""
        return {
            "id": self.id, "arch": list(self.arch), "runtimes": list(self.runtimes),
            "precisions": list(self.precisions), "max_opset": self.max_opset,
            "static_shapes": self.static_shapes, "memory_budget_mb": self.memory_budget_mb,
            "cpu_fallback": self.cpu_fallback,
            "runtime": {name: _options_json(o) for name, o in self.runtime.items()},
        }


def _options_json(o: RuntimeOptions) -> JSONDict:
    out: JSONDict = {}
    if o.providers:
        out["providers"] = list(o.providers)
    if o.provider_options:
        out["provider_options"] = to_json(o.provider_options)   # TOML tables: JSON, checked on the way
    if o.device:
        out["device"] = o.device
    if o.fallback_devices:
        out["fallback_devices"] = list(o.fallback_devices)
    if o.properties:
        out["properties"] = to_json(o.properties)
    if o.num_threads:
        out["num_threads"] = o.num_threads
    return out


# -- validation ------------------------------------------------------------------------------------

_TOP_KEYS = {"id", "description", "arch", "runtimes", "precisions", "max_opset", "static_shapes",
             "memory_budget_mb", "cpu_fallback", "runtime"}


def parse_profile(data: Mapping[str, object], source: str) -> TargetProfile:
    r = TomlSection(source, data, TargetError)
    r.only(_TOP_KEYS)
    profile_id = r.get("id", str)
    if not profile_id or not all(c.isalnum() or c in "-_." for c in profile_id):
        raise r.fail("id", "must be letters, digits, '-', '_' or '.'")
    runtimes = r.choices("runtimes", tuple(RUNTIMES))
    max_opset = r.get("max_opset", int)
    if not 7 <= max_opset <= 30:
        raise r.fail("max_opset", f"must be between 7 and 30, not {max_opset}")
    budget = r.get("memory_budget_mb", int, 0)
    if budget < 0:
        raise r.fail("memory_budget_mb", "must not be negative")
    runtime_tables = r.table("runtime")
    options: dict[str, RuntimeOptions] = {}
    for name, table in runtime_tables.data.items():
        if name not in RUNTIMES:
            raise r.fail(f"runtime.{name}", f"is not a known runtime (allowed: {', '.join(RUNTIMES)})")
        if name not in runtimes:
            raise r.fail(f"runtime.{name}",
                         f"configures a runtime that 'runtimes' does not list ({', '.join(runtimes)})")
        if not isinstance(table, dict):
            raise r.fail(f"runtime.{name}", "must be a table")
        options[name] = _parse_runtime(runtime_tables.table(name), name)
    return TargetProfile(
        id=profile_id,
        description=r.get("description", str, ""),
        arch=r.choices("arch", ARCHES),
        runtimes=runtimes,
        precisions=r.choices("precisions", PRECISIONS),
        max_opset=max_opset,
        static_shapes=r.get("static_shapes", bool, False),
        memory_budget_mb=budget,
        cpu_fallback=r.get("cpu_fallback", bool, True),
        runtime=MappingProxyType(options),
        source=source,
    )


def _parse_runtime(r: TomlSection[TargetError], name: str) -> RuntimeOptions:
    r.only(set(RUNTIMES[name].profile_keys))   # the keys the registry line allows for this runtime
    provider_options = r.get("provider_options", dict, {})
    providers = r.choices("providers", ORT_PROVIDERS, ())
    for provider, opts in provider_options.items():
        if provider not in ORT_PROVIDERS:
            raise r.fail(f"provider_options.{provider}", "is not a known execution provider")
        if not isinstance(opts, dict):
            raise r.fail(f"provider_options.{provider}", "must be a table")
    device = r.choice("device", OPENVINO_DEVICES, None)
    threads = r.get("num_threads", int, 0)
    if threads < 0:
        raise r.fail("num_threads", "must not be negative")
    return RuntimeOptions(
        providers=providers,
        provider_options=MappingProxyType({k: MappingProxyType(dict(v)) for k, v in provider_options.items()}),
        device=device,
        fallback_devices=r.choices("fallback_devices", OPENVINO_DEVICES, ()),
        properties=MappingProxyType(dict(r.get("properties", dict, {}))),
        num_threads=threads,
    )


def load_profile_file(path: str | Path) -> TargetProfile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TargetError(f"cannot read target profile {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}") from exc
    profile = parse_profile(data, str(path))
    if profile.id != path.stem:
        raise TargetError(f"{path}: key 'id' is '{profile.id}' but the file is named {path.name}; make them match")
    return profile


# -- discovery ------------------------------------------------------------------------------------

def _builtin_files() -> list[Path]:
    root = resources.files("edgeml.target_profiles")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml"))


def profile_files() -> dict[str, Path]:
    """Every profile file by id; user directories override built-ins (later directories win)."""
    found = {p.stem: p for p in _builtin_files()}
    for directory in user_target_dirs():
        if directory.is_dir():
            found.update({p.stem: p for p in sorted(directory.glob("*.toml"))})
    return found


def list_targets() -> list[TargetProfile]:
    return [load_profile_file(p) for _, p in sorted(profile_files().items())]


def get_target(target: str | Path | TargetProfile) -> TargetProfile:
    """A profile by id, or from a path to a ``.toml`` file."""
    if isinstance(target, TargetProfile):
        return target
    if str(target).endswith(".toml"):
        return load_profile_file(target)
    files = profile_files()
    if str(target) not in files:
        raise TargetError(f"unknown target '{target}'; known targets: {', '.join(sorted(files))} "
                          "(see: edgeml targets list)")
    return load_profile_file(files[str(target)])
