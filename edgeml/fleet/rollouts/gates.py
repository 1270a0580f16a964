"""The gates a wave must pass, judged on the devices' own telemetry (pure: no database, no clock).

The new version's health on the wave's devices over the observation window is compared with absolute
limits (error rate, drift) and with the PREVIOUS version's health (latency regression), because "slower
than before" is what hurts users, whatever the absolute number. Shadow agreement is judged on the
devices themselves (they hold both models); the fleet passes the limit down in the desired state and
learns the verdict from the agents' update events.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol


class Health(Protocol):
    """What the telemetry store reports for one version (``telemetry_store.VersionHealth``)."""

    @property
    def devices(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def error_rate(self) -> float: ...
    @property
    def p50_ms(self) -> float | None: ...
    @property
    def p95_ms(self) -> float | None: ...
    @property
    def drift(self) -> float | None: ...


@dataclass(frozen=True)
class Gates:
    max_error_rate: float | None = 0.05
    max_latency_regression: float | None = 0.5    # p50 may grow by at most this fraction of the previous p50
    min_shadow_agreement: float | None = None     # judged on devices: sent in desired.probation
    max_drift: float | None = None                # PSI of the inputs against the bundle's reference stats
    min_requests: int = 0                         # below this, the window has too little traffic to judge
    # Share of the wave's installed devices that must have sent telemetry for the new version before the
    # gates are judged: a wave is never passed on no data (at least one device, whatever this says).
    min_reporting: float = 0.5

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gates:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def probation(self) -> dict[str, Any]:
        """The part of the gates the agents enforce themselves during their probation."""
        out: dict[str, Any] = {}
        if self.max_error_rate is not None:
            out["max_error_rate"] = self.max_error_rate
        if self.max_latency_regression is not None:
            out["max_latency_regression"] = self.max_latency_regression
        if self.min_shadow_agreement is not None:
            out["min_shadow_agreement"] = self.min_shadow_agreement
        return out


@dataclass(frozen=True)
class Coverage:
    """How much of the wave the telemetry covers: its installed devices and those that reported."""

    installed: int
    reporting: int

    def needed(self, gates: Gates) -> int:
        return max(1, math.ceil(self.installed * gates.min_reporting - 1e-9))


@dataclass(frozen=True)
class Verdict:
    passed: bool
    enough_traffic: bool
    reasons: tuple[str, ...]
    figures: dict[str, Any]


def _health_json(h: Health | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {"devices": h.devices, "requests": h.requests, "errors": h.errors, "error_rate": round(h.error_rate, 4),
            "p50_ms": h.p50_ms, "p95_ms": h.p95_ms, "drift": h.drift}


def judge(gates: Gates, new: Health, previous: Health | None, coverage: Coverage | None = None) -> Verdict:
    """Pass/fail with every reason and the numbers behind it (they go to the audit log as they are).

    No data is never a pass: without any telemetry of the new version (or from fewer of the wave's devices
    than ``min_reporting`` asks), ``enough_traffic`` is False and the verdict fails with that reason; the
    controller keeps observing while it may, and fails the wave with these reasons at its timeout."""
    reasons: list[str] = []
    figures: dict[str, Any] = {"new": _health_json(new), "previous": _health_json(previous), "gates": gates.to_json()}
    enough = new.requests >= gates.min_requests and new.requests > 0
    if new.requests == 0:
        reasons.append("no telemetry of the new version arrived in the window")
    elif new.requests < gates.min_requests:
        reasons.append(f"only {new.requests} requests in the window (at least {gates.min_requests} needed)")
    if coverage is not None:
        figures["reporting"] = {"devices": coverage.reporting, "installed": coverage.installed,
                                "needed": coverage.needed(gates)}
        if new.requests and coverage.reporting < coverage.needed(gates):
            enough = False
            reasons.append(f"only {coverage.reporting} of the wave's {coverage.installed} installed devices sent "
                           f"telemetry of the new version (at least {coverage.needed(gates)} needed)")
    if gates.max_error_rate is not None and new.requests and new.error_rate > gates.max_error_rate:
        reasons.append(f"error rate {new.error_rate:.1%} ({new.errors}/{new.requests}) "
                       f"exceeds {gates.max_error_rate:.1%}")
    if gates.max_latency_regression is not None and previous is not None and previous.p50_ms and new.p50_ms is not None:
        limit = previous.p50_ms * (1 + gates.max_latency_regression)
        figures["latency_limit_ms"] = round(limit, 3)
        if new.p50_ms > limit:
            reasons.append(f"p50 latency {new.p50_ms:.2f} ms vs {previous.p50_ms:.2f} ms on the previous version "
                           f"(limit {limit:.2f} ms, +{gates.max_latency_regression:.0%})")
    if gates.max_drift is not None and new.drift is not None and new.drift > gates.max_drift:
        reasons.append(f"input drift (PSI) {new.drift:.3f} exceeds {gates.max_drift:.3f}")
    return Verdict(passed=not reasons, enough_traffic=enough, reasons=tuple(reasons), figures=figures)
