"""Waiting for a rollout to end, as a CI job does: poll its status with a growing interval, return it once
completed, raise :class:`RolloutFailed` (with every wave's gate figures) once a gate stopped it or it was
aborted, :class:`RolloutTimeout` when the time is up.

A rollout an operator paused is not over (a resume carries it on): waiting goes on until the timeout.
A server that cannot be reached for a while (a restart) does not end the wait either: only the timeout does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeml.errors import RolloutFailed, RolloutTimeout, TransientFleetError
from edgeml.fleet.sdk.records import RolloutStatus, WaveResult


@dataclass(frozen=True)
class Polling:
    """First poll after ``first_s``, each next one ``factor`` times later, never more than ``max_s`` apart."""

    first_s: float = 1.0
    factor: float = 1.5
    max_s: float = 10.0

    def intervals(self) -> Callable[[], float]:
        state = {"next": self.first_s}

        def step() -> float:
            now = state["next"]
            state["next"] = min(now * self.factor, self.max_s)
            return now
        return step


def _number(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{round(value, digits):g}{unit}"
    return f"{value}{unit}"


def _health_text(h: dict[str, Any]) -> str:
    rate = h.get("error_rate")
    return (f"{h.get('devices', 0)} device(s), {h.get('requests', 0)} requests, {h.get('errors', 0)} errors "
            f"({'n/a' if rate is None else f'{rate:.1%}'}), p50 {_number(h.get('p50_ms'), ' ms')}, "
            f"p95 {_number(h.get('p95_ms'), ' ms')}, drift (PSI) {_number(h.get('drift'))}")


def figures_text(figures: dict[str, Any]) -> list[str]:
    """The figures a wave was judged on, one line each: the new version, the previous one, the limits."""
    lines = []
    if isinstance(figures.get("new"), dict):
        lines.append(f"new version: {_health_text(figures['new'])}")
    if isinstance(figures.get("previous"), dict):
        lines.append(f"previous version: {_health_text(figures['previous'])}")
    gates = figures.get("gates")
    if isinstance(gates, dict):
        limits = ", ".join(f"{k}={v}" for k, v in gates.items() if v is not None)
        lines.append(f"gates: {limits}" + (f" (p50 limit {figures['latency_limit_ms']} ms)"
                                           if "latency_limit_ms" in figures else ""))
    rest = {k: v for k, v in figures.items() if k not in ("new", "previous", "gates", "latency_limit_ms")}
    if rest:
        lines.append(", ".join(f"{k}: {v}" for k, v in rest.items()))
    return lines


def wave_text(result: WaveResult, waves: int) -> list[str]:
    head = f"wave {result.wave}/{waves} " + ("passed" if result.passed else
                                             f"FAILED the gate ({result.outcome or 'stopped'})")
    lines = [head] + [f"  gate: {r}" for r in result.reasons]
    return lines + [f"  {line}" for line in figures_text(result.figures)]


def failure_message(status: RolloutStatus) -> str:
    """Why the rollout failed, which gate, and every judged wave's figures."""
    results = status.results
    if status.stopped_by_gate:
        headline = (f"rollout {status.id} of {status.bundle} {status.state}: the gate failed at wave "
                    f"{results[-1].wave if results else status.wave}/{status.waves}: {status.reason}")
    else:
        headline = f"rollout {status.id} of {status.bundle} {status.state}: {status.reason or 'no reason given'}"
    lines = [headline]
    for result in results:
        lines += wave_text(result, status.waves)
    return "\n".join(lines)


def finished(status: RolloutStatus) -> bool:
    """Over for good (completed or aborted), or stopped by a failed gate."""
    return status.state in ("completed", "aborted") or status.stopped_by_gate


def wait(fetch: Callable[[], RolloutStatus], rollout_id: str, timeout_s: float, *, polling: Polling = Polling(),
         on_status: Callable[[RolloutStatus], None] | None = None, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> RolloutStatus:
    """Poll ``fetch`` until the rollout is over; see the module docstring for what ends the wait."""
    deadline = clock() + timeout_s
    interval = polling.intervals()
    last: RolloutStatus | None = None
    unreachable: TransientFleetError | None = None
    while True:
        try:
            last, unreachable = fetch(), None
        except TransientFleetError as exc:   # the server restarting: keep waiting until the deadline
            unreachable = exc
        if last is not None and unreachable is None:
            if on_status is not None:
                on_status(last)
            if last.state == "completed":
                return last
            if finished(last):
                raise RolloutFailed(failure_message(last), last, last.results)
        left = deadline - clock()
        if left <= 0:
            break
        sleep(min(interval(), left))
    state = f"still {last.state} at wave {last.wave}/{last.waves}" if last is not None else "never answered"
    why = f"; the server did not answer lately: {unreachable}" if unreachable is not None else ""
    raise RolloutTimeout(f"rollout {rollout_id} {state} after {timeout_s:g} s{why}; follow it with "
                         f"'edgeml-fleet rollout status {rollout_id} --watch'", last)
