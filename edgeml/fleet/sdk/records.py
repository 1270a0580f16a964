"""Typed, read-only views of what the fleet server answers.

Each record takes the fields it knows from the JSON and keeps the whole answer as ``raw``: a newer
server's extra fields are not lost (the CLI prints ``raw`` for ``--json``), and a field an older server
does not send reads as its default. Times are the server's ISO 8601 text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")


@dataclass(frozen=True, kw_only=True)
class Record:
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
        known = {f.name for f in dataclasses.fields(cls) if f.name != "raw"}
        return cls(raw=dict(data), **{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, kw_only=True)
class Bundle(Record):
    """A signed bundle in the registry; ``manifest``/``fidelity``/``benchmark`` only from :meth:`Client.get_bundle`."""

    id: str = ""
    name: str = ""
    version: str = ""
    target: str = ""
    runtime: str = ""
    precision: str = ""
    key_id: str = ""
    size: int = 0
    uploaded_at: str = ""
    uploaded_by: str = ""
    manifest: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = None
    benchmark: dict[str, Any] | None = None
    in_use_by_rollouts: list[str] | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, kw_only=True)
class Rollout(Record):
    """A rollout's summary: what create/list/pause/resume/abort answer."""

    id: str = ""
    bundle: str = ""
    bundle_id: str = ""
    state: str = ""
    selector: dict[str, str] = field(default_factory=dict)
    wave: int = 0
    waves: int = 0
    devices: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    reason: str | None = None
    created_at: str = ""
    created_by: str = ""
    updated_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class WaveResult:
    """The fleet's verdict on one wave, from its decision in the audit log, with the figures it judged on
    (``figures["new"]``: the new version's requests, errors, error_rate, p50_ms, p95_ms, drift on the wave's
    devices; ``figures["previous"]``: the same for the version they ran before; ``figures["gates"]``)."""

    wave: int
    passed: bool
    reasons: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None     # for a failed gate: "paused" or "aborted"
    at: str = ""


@dataclass(frozen=True, kw_only=True)
class RolloutStatus(Rollout):
    """Everything ``GET /v1/rollouts/{id}`` answers, plus :attr:`results`: every judged wave's verdict."""

    gates: dict[str, Any] = field(default_factory=dict)
    observe_s: float = 0.0
    wave_timeout_s: float = 0.0
    on_failure: str = ""
    wave_list: list[dict[str, Any]] = field(default_factory=list)
    live: dict[str, Any] | None = None
    device_list: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def results(self) -> list[WaveResult]:
        """Wave verdicts in the order they were taken (a resumed wave may be judged twice)."""
        out = []
        for d in self.decisions:
            details = d.get("details") or {}
            if d.get("action") == "rollout.wave_passed":
                out.append(WaveResult(wave=int(details.get("wave", 0)), passed=True, at=str(d.get("at", "")),
                                      figures=dict(details.get("figures") or {})))
            elif d.get("action") == "rollout.gate_failed":
                out.append(WaveResult(wave=int(details.get("wave", 0)), passed=False, at=str(d.get("at", "")),
                                      reasons=tuple(str(r) for r in details.get("reasons") or ()),
                                      figures=dict(details.get("figures") or {}), outcome=details.get("outcome")))
        return out

    @property
    def stopped_by_gate(self) -> bool:
        """Paused or aborted by a failed gate (not by an operator's pause that a resume may undo)."""
        stops = [d.get("action") for d in self.decisions
                 if d.get("action") in ("rollout.gate_failed", "rollout.pause", "rollout.resume")]
        if self.state == "aborted":
            return any(r.passed is False for r in self.results)
        return self.state == "paused" and bool(stops) and stops[-1] == "rollout.gate_failed"


@dataclass(frozen=True, kw_only=True)
class VersionHealth(Record):
    """One model version across the fleet over the asked window (``GET /v1/health``)."""

    model: str = ""
    version: str = ""
    devices: int = 0
    requests: int = 0
    errors: int = 0
    error_rate: float = 0.0
    requests_per_s: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    drift: float | None = None


@dataclass(frozen=True, kw_only=True)
class Device(Record):
    """An enrolled device (a paged list may hold only the fields asked for: the rest keep their defaults)."""

    id: str = ""
    name: str = ""
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    hardware: dict[str, Any] = field(default_factory=dict)
    installed: dict[str, Any] = field(default_factory=dict)
    enrolled_at: str = ""
    last_seen: str | None = None
    online: bool = False
    revoked: bool = False


@dataclass(frozen=True, kw_only=True)
class AuditEntry(Record):
    id: int = 0
    at: str = ""
    actor: str = ""
    action: str = ""
    target: str | None = None
    source: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Capture(Record):
    """A sample a device captured (``trigger``: drift, low_confidence, shadow_disagreement or random), with
    the figures that fired it; its bytes (an .npz of ``in/<name>`` and ``out/<name>`` arrays) download apart."""

    device: str = ""
    capture_id: str = ""
    model: str = ""
    version: str = ""
    trigger: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Any] = field(default_factory=dict)
    captured_at: str = ""
    received_at: str = ""
    size: int = 0
