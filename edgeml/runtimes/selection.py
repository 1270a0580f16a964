"""Choose how to run a bundle here: a chain of filters over candidate (runtime, device) pairs.

Candidates come from the bundle: its runtime and the provider/device preference order (the manifest's
``runtime_preferences``, else the target profile's options for that runtime, read by the runtime's
backend class). Each filter discards the candidates it rules out and records why; if nothing survives,
:class:`BackendUnavailableError` lists every reason. A CPU candidate that stands in for an accelerator
the bundle preferred is a *fallback*: it survives only where the agent config (or, by default, the
profile's ``cpu_fallback``) allows it, and the result says so, so that ``/v1/models`` and telemetry can
show it.

What is particular to a runtime (its extra, preference order, CPU devices, devices a host cannot drive,
options) is asked of its backend class through the registry; nothing here names a runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgeml.bundle.manifest import Manifest
from edgeml.errors import BackendUnavailableError
from edgeml.runtimes.base import Backend, BackendOptions, ProfileOptions, backend_class
from edgeml.runtimes.host import HostInfo
from edgeml.runtimes.probe import probe_host, runtime_devices
from edgeml.runtimes.registry import RUNTIMES, backends

log = logging.getLogger("edgeml.selection")


def _backend(runtime: str) -> type[Backend]:
    """The runtime's backend class; the base class (CPU only, no options) for a runtime nobody registered."""
    return backend_class(runtime) if runtime in backends() else Backend


def is_cpu(runtime: str, device: str) -> bool:
    return device in _backend(runtime).cpu_devices


@dataclass(frozen=True)
class SelectionPolicy:
    """What the device owner allows, on top of the bundle's profile.

    ``cpu_fallback``: None follows the profile's ``cpu_fallback``; True/False overrides it.
    ``allow_other_arch``: run a bundle built for another CPU architecture (portable ONNX/TFLite only).
    """

    cpu_fallback: bool | None = None
    allow_other_arch: bool = False
    num_threads: int = 0
    allow_spinning: bool | None = None
    cache_dir: Path | None = None


@dataclass(frozen=True)
class Candidate:
    runtime: str
    device: str          # ORT execution provider, OpenVINO device, or "CPU" for LiteRT
    rank: int            # position in the bundle's preference order

    @property
    def is_cpu(self) -> bool:
        return is_cpu(self.runtime, self.device)

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

    def to_json(self) -> dict[str, object]:
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
    cls = _backend(manifest.runtime)
    return cls.preferences(profile_options(manifest)) or cls.default_preferences


def profile_options(manifest: Manifest) -> ProfileOptions:
    """The target profile's table for the bundle's runtime, as the manifest carries it."""
    tables = manifest.target.get("runtime")
    options = tables.get(manifest.runtime) if isinstance(tables, Mapping) else None
    return options if isinstance(options, Mapping) else {}


# -- the filters, in order ------------------------------------------------------------------------------

def runtime_supported(c: Candidate, ctx: _Context) -> str | None:
    if c.runtime not in backends():
        entry = RUNTIMES.get(c.runtime)
        hint = (f"; build the bundle for runtime '{entry.alias_of}', which runs its models"
                if entry and entry.alias_of else "")
        return (f"{c}: the agent has no backend for runtime '{c.runtime}' "
                f"(supported: {', '.join(backends())}){hint}")
    target_runtimes = ctx.manifest.target.get("runtimes")
    if target_runtimes and c.runtime not in target_runtimes:
        return f"{c}: target '{ctx.manifest.target_id}' does not list runtime '{c.runtime}'"
    return None


def runtime_installed(c: Candidate, ctx: _Context) -> str | None:
    if c.runtime not in ctx.host.runtimes:
        extra = backend_class(c.runtime).extra
        return f"{c}: {c.runtime} is not installed; install it with: pip install 'edgeml[{extra}]'"
    return None


def arch_matches(c: Candidate, ctx: _Context) -> str | None:
    arches = ctx.manifest.target.get("arch") or []
    if arches and ctx.host.arch not in arches and not ctx.policy.allow_other_arch:
        return (f"{c}: target '{ctx.manifest.target_id}' is for {'/'.join(arches)}, this host is {ctx.host.arch} "
                "(set allow_other_arch = true in the agent config to run a portable model anyway)")
    return None


def device_present(c: Candidate, ctx: _Context) -> str | None:
    cls = backend_class(c.runtime)
    unusable = cls.device_unusable(c.device, ctx.host)
    if unusable:
        return f"{c}: {unusable}"
    available = ctx.devices_of(c.runtime)
    if c.device not in available:
        return (f"{c}: {c.device} is not available here "
                f"({c.runtime} {cls.device_kind}: {', '.join(available) or 'none'})")
    return None


def fallback_allowed(c: Candidate, ctx: _Context) -> str | None:
    prefs = preferences(ctx.manifest)
    if not c.is_cpu or not prefs or is_cpu(c.runtime, prefs[0]):
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
    fallback = best.is_cpu and not (prefs and is_cpu(best.runtime, prefs[0]))
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
    runtime_opts = profile_options(manifest)
    profile_threads = runtime_opts.get("num_threads")
    threads = policy.num_threads or (profile_threads if isinstance(profile_threads, int) else 0)
    base = BackendOptions(num_threads=threads, allow_spinning=policy.allow_spinning, cache_dir=policy.cache_dir)
    return backend_class(manifest.runtime).backend_options(runtime_opts, [c.device for c in survivors], base)
