"""Choose how to run a bundle here: a chain of filters over candidate (runtime, device) pairs.

Candidates come from the bundle: its runtime and the provider/device preference order (the manifest's
``runtime_preferences``, else the target profile's options for that runtime). Each filter discards the
candidates it rules out and records why; if nothing survives, :class:`BackendUnavailableError` lists
every reason. A CPU candidate that stands in for an accelerator the bundle preferred is a *fallback*:
it survives only where the agent config (or, by default, the profile's ``cpu_fallback``) allows it,
and the result says so, so that ``/v1/models`` and telemetry can show it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeml.bundle.manifest import Manifest
from edgeml.errors import BackendUnavailableError
from edgeml.runtimes.base import BackendOptions
from edgeml.runtimes.probe import HostInfo, probe_host, runtime_devices

log = logging.getLogger("edgeml.selection")

CPU_DEVICES = frozenset({"CPU", "CPUExecutionProvider", "XnnpackExecutionProvider"})
_DEFAULT_PREFERENCES = {"onnxruntime": ("CPUExecutionProvider",), "openvino": ("CPU",), "litert": ("CPU",)}
_EXTRA = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "litert"}


@dataclass(frozen=True)
class SelectionPolicy:
    """What the device owner allows, on top of the bundle's profile.

    ``cpu_fallback``: None follows the profile's ``cpu_fallback``; True/False overrides it.
    ``allow_other_arch``: run a bundle built for another CPU architecture (portable ONNX/TFLite only).
    """

    cpu_fallback: bool | None = None
    allow_other_arch: bool = False
    num_threads: int = 0
    cache_dir: Path | None = None


@dataclass(frozen=True)
class Candidate:
    runtime: str
    device: str          # ORT execution provider, OpenVINO device, or "CPU" for LiteRT
    rank: int            # position in the bundle's preference order

    @property
    def is_cpu(self) -> bool:
        return self.device in CPU_DEVICES

    def __str__(self) -> str:
        return f"{self.runtime}/{self.device}"


@dataclass(frozen=True)
class Selection:
    runtime: str
    device: str                         # the preferred device that survived
    options: BackendOptions
    fallback: bool                      # running on the CPU instead of a preferred accelerator
    fallback_reason: str | None         # why the accelerator(s) were not used
    discarded: tuple[str, ...] = ()     # one line per discarded candidate
    preferred: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "device": self.device, "fallback": self.fallback,
                "fallback_reason": self.fallback_reason, "discarded": list(self.discarded),
                "preferred": list(self.preferred)}


@dataclass
class _Context:
    manifest: Manifest
    host: HostInfo
    policy: SelectionPolicy
    devices_of: Callable[[str], Sequence[str]]
    survivors: list[Candidate] = field(default_factory=list)   # candidates kept so far, in order


Filter = Callable[[Candidate, _Context], str | None]   # a reason to discard, or None to keep


def preferences(manifest: Manifest) -> tuple[str, ...]:
    """Devices in the order the bundle prefers them."""
    if manifest.runtime_preferences:
        return tuple(manifest.runtime_preferences)
    options: Mapping[str, Any] = manifest.target.get("runtime", {}).get(manifest.runtime, {})
    if manifest.runtime == "onnxruntime" and options.get("providers"):
        return tuple(options["providers"])
    if manifest.runtime == "openvino" and (options.get("device") or options.get("fallback_devices")):
        device = options.get("device") or "AUTO"
        fallbacks = tuple(options.get("fallback_devices", ()))
        # AUTO means "the runtime chooses among the fallback list", so the list is the candidates.
        return fallbacks if device == "AUTO" else (device, *[d for d in fallbacks if d != device])
    return _DEFAULT_PREFERENCES.get(manifest.runtime, ())


# -- the filters, in order ------------------------------------------------------------------------------

def runtime_supported(c: Candidate, ctx: _Context) -> str | None:
    if c.runtime not in _EXTRA:
        return f"{c}: the agent has no backend for runtime '{c.runtime}' (supported: {', '.join(_EXTRA)})"
    target_runtimes = ctx.manifest.target.get("runtimes")
    if target_runtimes and c.runtime not in target_runtimes:
        return f"{c}: target '{ctx.manifest.target_id}' does not list runtime '{c.runtime}'"
    return None


def runtime_installed(c: Candidate, ctx: _Context) -> str | None:
    if c.runtime not in ctx.host.runtimes:
        return f"{c}: {c.runtime} is not installed; install it with: pip install 'edgeml[{_EXTRA[c.runtime]}]'"
    return None


def arch_matches(c: Candidate, ctx: _Context) -> str | None:
    arches = ctx.manifest.target.get("arch") or []
    if arches and ctx.host.arch not in arches and not ctx.policy.allow_other_arch:
        return (f"{c}: target '{ctx.manifest.target_id}' is for {'/'.join(arches)}, this host is {ctx.host.arch} "
                "(set allow_other_arch = true in the agent config to run a portable model anyway)")
    return None


def device_present(c: Candidate, ctx: _Context) -> str | None:
    available = ctx.devices_of(c.runtime)
    if c.runtime == "onnxruntime" and c.device == "TensorrtExecutionProvider" and not ctx.host.tensorrt_version:
        return f"{c}: TensorRT is not installed on this host (no libnvinfer)"
    if c.runtime == "onnxruntime" and c.device in ("TensorrtExecutionProvider", "CUDAExecutionProvider") \
            and not ctx.host.cuda:
        return f"{c}: no NVIDIA GPU/CUDA on this host"
    if c.device not in available:
        what = "execution providers" if c.runtime == "onnxruntime" else "devices"
        return f"{c}: {c.device} is not available here ({c.runtime} {what}: {', '.join(available) or 'none'})"
    return None


def fallback_allowed(c: Candidate, ctx: _Context) -> str | None:
    prefs = preferences(ctx.manifest)
    if not c.is_cpu or not prefs or prefs[0] in CPU_DEVICES:
        return None
    if any(not s.is_cpu for s in ctx.survivors):
        return None   # an accelerator runs the model; the CPU EP only takes the nodes it cannot (ORT does that anyway)
    allowed = ctx.policy.cpu_fallback
    if allowed is None:
        allowed = bool(ctx.manifest.target.get("cpu_fallback", False))
        where = f"target profile '{ctx.manifest.target_id}' (cpu_fallback = false)"
    else:
        where = "the agent config (cpu_fallback = false)"
    if not allowed:
        return (f"{c}: falling back from {prefs[0]} to the CPU is not allowed by {where}; "
                "set cpu_fallback = true in the agent config to allow it")
    return None


FILTERS: tuple[Filter, ...] = (runtime_supported, runtime_installed, arch_matches, device_present, fallback_allowed)


def select_backend(
    manifest: Manifest,
    policy: SelectionPolicy | None = None,
    *,
    host: HostInfo | None = None,
    devices_of: Callable[[str], Sequence[str]] | None = None,
) -> Selection:
    """The backend and options to run ``manifest``'s model here, or every reason why not."""
    policy = policy or SelectionPolicy()
    ctx = _Context(manifest, host or probe_host(), policy, devices_of or runtime_devices)
    prefs = preferences(manifest)
    candidates = [Candidate(manifest.runtime, d, i) for i, d in enumerate(prefs)]
    if not candidates:
        candidates = [Candidate(manifest.runtime, "CPU", 0)]
    survivors, reasons = ctx.survivors, []
    for cand in candidates:
        for check in FILTERS:
            reason = check(cand, ctx)
            if reason:
                reasons.append(reason)
                break
        else:
            survivors.append(cand)
    if not survivors:
        raise BackendUnavailableError(f"{manifest.name}@{manifest.version}", reasons)
    best = survivors[0]
    fallback = best.is_cpu and not (prefs and prefs[0] in CPU_DEVICES)
    fallback_reason = "; ".join(reasons) if fallback else None
    if fallback:
        log.warning("%s@%s runs on %s instead of %s (CPU fallback): %s", manifest.name, manifest.version,
                    best, prefs[0], fallback_reason)
    return Selection(
        runtime=best.runtime,
        device=best.device,
        options=_options(manifest, survivors, policy),
        fallback=fallback,
        fallback_reason=fallback_reason,
        discarded=tuple(reasons),
        preferred=prefs,
    )


def _options(manifest: Manifest, survivors: list[Candidate], policy: SelectionPolicy) -> BackendOptions:
    runtime_opts: Mapping[str, Any] = manifest.target.get("runtime", {}).get(manifest.runtime, {})
    threads = policy.num_threads or int(runtime_opts.get("num_threads", 0) or 0)
    base = BackendOptions(num_threads=threads, cache_dir=policy.cache_dir)
    if manifest.runtime == "onnxruntime":
        provider_options = {p: dict(o) for p, o in runtime_opts.get("provider_options", {}).items()}
        return replace(base, providers=tuple(c.device for c in survivors), provider_options=provider_options)
    if manifest.runtime == "openvino":
        device = survivors[0].device if len(survivors) == 1 else "AUTO:" + ",".join(c.device for c in survivors)
        return replace(base, device=device, properties=dict(runtime_opts.get("properties", {})))
    return base
