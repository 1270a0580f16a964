"""The capture policy: which live samples a device keeps and sends to the fleet (shared by agent and fleet).

A bundle carries a default in its manifest (``"capture"``, covered by the signature); the fleet may
override it per model in the signed desired state (``"capture": {"<model>": policy}``). Capture is off
unless a policy says ``"enabled": true``. Shape (every key optional but ``enabled``)::

    {"enabled": true,
     "keep": "inputs" | "outputs" | "both",                 # what a captured sample holds (default both)
     "triggers": {
        "drift": {"threshold": 0.25, "tensor": "x"},         # the input's running PSI (any input if no tensor)
        "low_confidence": {"threshold": 0.5, "output": "y"}, # top-1 probability under the threshold
        "shadow_disagreement": true,                         # probation: new and previous model disagree
        "random": {"rate": 0.01}},                           # a share of all requests
     "budget": {"samples_per_hour": 60, "bytes_per_day": 50000000, "disk_quota_bytes": 200000000}}

Both documents are checked against ``edgeml/schemas/capture.schema.json`` (referenced from the manifest
and desired-state schemas); :func:`parse_policy` turns one into a frozen :class:`CapturePolicy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeml.errors import ConfigError

KEEP = ("inputs", "outputs", "both")
TRIGGERS = ("drift", "low_confidence", "shadow_disagreement", "random")


@dataclass(frozen=True)
class CaptureBudget:
    samples_per_hour: int = 60
    bytes_per_day: int = 50_000_000
    disk_quota_bytes: int = 200_000_000


@dataclass(frozen=True)
class CapturePolicy:
    enabled: bool = False
    keep: str = "both"
    drift_threshold: float | None = None      # None: the trigger is off
    drift_tensor: str | None = None
    confidence_threshold: float | None = None
    confidence_output: str | None = None
    shadow_disagreement: bool = False
    random_rate: float = 0.0
    budget: CaptureBudget = CaptureBudget()

    @property
    def keeps_inputs(self) -> bool:
        return self.keep in ("inputs", "both")

    @property
    def keeps_outputs(self) -> bool:
        return self.keep in ("outputs", "both")

    def to_json(self) -> dict[str, Any]:
        triggers: dict[str, Any] = {}
        if self.drift_threshold is not None:
            triggers["drift"] = {"threshold": self.drift_threshold,
                                 **({"tensor": self.drift_tensor} if self.drift_tensor else {})}
        if self.confidence_threshold is not None:
            triggers["low_confidence"] = {"threshold": self.confidence_threshold,
                                          **({"output": self.confidence_output} if self.confidence_output else {})}
        if self.shadow_disagreement:
            triggers["shadow_disagreement"] = True
        if self.random_rate:
            triggers["random"] = {"rate": self.random_rate}
        b = self.budget
        return {"enabled": self.enabled, "keep": self.keep, "triggers": triggers,
                "budget": {"samples_per_hour": b.samples_per_hour, "bytes_per_day": b.bytes_per_day,
                           "disk_quota_bytes": b.disk_quota_bytes}}


OFF = CapturePolicy()


def parse_policy(doc: Mapping[str, Any] | None, where: str = "capture policy") -> CapturePolicy:
    """A policy from its JSON form (already schema-checked where it came from a signed document); a
    missing document means capture is off. Raises :class:`ConfigError` naming the offending key."""
    if doc is None:
        return OFF
    from edgeml import schemas

    found = schemas.problems("capture", doc)
    if found:
        raise ConfigError(f"{where} is invalid: {'; '.join(found)}")
    triggers = doc.get("triggers") or {}
    drift, low = triggers.get("drift") or {}, triggers.get("low_confidence") or {}
    budget = doc.get("budget") or {}
    default = CaptureBudget()
    return CapturePolicy(
        enabled=bool(doc["enabled"]),
        keep=str(doc.get("keep", "both")),
        drift_threshold=float(drift["threshold"]) if drift else None,
        drift_tensor=drift.get("tensor"),
        confidence_threshold=float(low["threshold"]) if low else None,
        confidence_output=low.get("output"),
        shadow_disagreement=bool(triggers.get("shadow_disagreement", False)),
        random_rate=float((triggers.get("random") or {}).get("rate", 0.0)),
        budget=CaptureBudget(
            samples_per_hour=int(budget.get("samples_per_hour", default.samples_per_hour)),
            bytes_per_day=int(budget.get("bytes_per_day", default.bytes_per_day)),
            disk_quota_bytes=int(budget.get("disk_quota_bytes", default.disk_quota_bytes)),
        ),
    )


__all__ = ["KEEP", "OFF", "TRIGGERS", "CaptureBudget", "CapturePolicy", "parse_policy"]
