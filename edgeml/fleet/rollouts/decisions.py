"""The decisions on one rollout's current wave: wait, count devices offline, observe, pass, fail, abort.

Each runs in the caller's transaction on the rollout row the caller holds, after
:func:`waves.absorb_progress`; each decision goes to the audit log with the numbers behind it. Returned
documents (devices sent back) are published by the caller after the commit.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from edgeml.fleet.rollouts.desired_docs import Issued
from edgeml.fleet.rollouts.gates import Verdict
from edgeml.fleet.rollouts.waves import (
    MEMBERS,
    WAITING,
    Step,
    audit,
    listed,
    member_ids,
    revert,
    verdict,
    wave_counts,
)
from edgeml.fleet.store.models import Rollout
from edgeml.protocol import RolloutDeviceState as DeviceState
from edgeml.protocol import RolloutState

REASONS_LISTED = 10   # failed devices named in a rollout's reason; the rest are counted


def start_wave(session: Session, r: Rollout, now: datetime) -> None:
    """Record that the current wave began (before its devices are sent the version): its timeout runs."""
    if r.wave_started_at is None:
        r.wave_started_at, r.updated_at = now, now
        audit(session, "rollout.wave_started", r.id, wave=r.current_wave + 1,
              **listed(member_ids(session, r, MEMBERS.c.wave == r.current_wave)))


def judge_wave(session: Session, r: Rollout, step: Step) -> list[Issued]:
    now, w = step.now, r.current_wave
    start_wave(session, r, now)
    wave, upto = wave_counts(session, r)
    if upto[DeviceState.FAILED]:
        return _fail_on_devices(session, r, step, upto[DeviceState.FAILED])
    waiting = sum(wave[s] for s in WAITING)
    started = r.wave_started_at or now
    timed_out = (now - started).total_seconds() >= r.wave_timeout_s
    if waiting and not timed_out:
        return []
    if waiting:
        _count_offline(session, r, step)
        wave[DeviceState.OFFLINE] += waiting
    if not wave[DeviceState.INSTALLED]:
        if wave[DeviceState.OFFLINE]:
            return fail(session, r, step, [f"no device of wave {w + 1} installed {r.version} within "
                                           f"{r.wave_timeout_s:g} s"], {"offline": wave[DeviceState.OFFLINE]})
        return advance(session, r, step, {"note": "every device of this wave was sent back"})
    if r.observe_started_at is None:
        r.observe_started_at, r.updated_at = now, now
        audit(session, "rollout.observing", r.id, wave=w + 1, installed=upto[DeviceState.INSTALLED],
              observe_s=r.observe_s)
        return []
    observed = (now - r.observe_started_at).total_seconds()
    if observed < r.observe_s:
        return []
    found = verdict(session, r, step.health)
    if not found.enough_traffic and observed < r.wave_timeout_s:
        return []  # no pass on no data: keep observing while telemetry is missing, up to the wave timeout
    if not found.passed:
        return fail(session, r, step, _timeout_reasons(r, found) if not found.enough_traffic else list(found.reasons),
                    found.figures)
    return advance(session, r, step, found.figures)


def _timeout_reasons(r: Rollout, found: Verdict) -> list[str]:
    """The reasons of a wave that waited for telemetry until its timeout, the missing data first."""
    new = found.figures.get("new") or {}
    wait = f"within the wave timeout ({r.wave_timeout_s:g} s of observation)"
    if not new.get("requests"):
        return [f"no telemetry of {r.name}@{r.version} arrived from wave {r.current_wave + 1}'s installed devices "
                f"{wait}", *found.reasons[1:]]
    return [f"{reason} {wait}" if i == 0 else reason for i, reason in enumerate(found.reasons)]


def _count_offline(session: Session, r: Rollout, step: Step) -> None:
    offline = member_ids(session, r, MEMBERS.c.wave == r.current_wave, MEMBERS.c.state.in_(WAITING))
    session.execute(update(MEMBERS).where(MEMBERS.c.rollout_id == r.id, MEMBERS.c.wave == r.current_wave,
                                          MEMBERS.c.state.in_(WAITING))
                    .values(state=DeviceState.OFFLINE, updated_at=step.now,
                            reason=f"no answer within the wave timeout ({r.wave_timeout_s:g} s)"))
    audit(session, "rollout.devices_offline", r.id, wave=r.current_wave + 1, wave_timeout_s=r.wave_timeout_s,
          **listed(offline))


def _fail_on_devices(session: Session, r: Rollout, step: Step, count: int) -> list[Issued]:
    failed = session.execute(select(MEMBERS.c.device_id, MEMBERS.c.reason).where(
        MEMBERS.c.rollout_id == r.id, MEMBERS.c.wave <= r.current_wave, MEMBERS.c.state == DeviceState.FAILED)
        .order_by(MEMBERS.c.device_id).limit(REASONS_LISTED)).all()
    reasons = [f"device {d} {reason or 'failed'}" for d, reason in failed]
    if count > len(failed):
        reasons.append(f"and {count - len(failed)} more devices failed")
    return fail(session, r, step, reasons, {"failed_devices": count})


def advance(session: Session, r: Rollout, step: Step, figures: dict[str, Any]) -> list[Issued]:
    waves = (session.scalar(select(MEMBERS.c.wave).where(MEMBERS.c.rollout_id == r.id)
                            .order_by(MEMBERS.c.wave.desc()).limit(1)) or 0) + 1
    audit(session, "rollout.wave_passed", r.id, wave=r.current_wave + 1, of=waves, figures=figures)
    r.current_wave += 1
    r.wave_started_at = r.observe_started_at = None
    r.updated_at = step.now
    if r.current_wave >= waves:
        r.state = RolloutState.COMPLETED
        counts = Counter({s: n for s, n in session.execute(
            select(MEMBERS.c.state, func.count()).where(MEMBERS.c.rollout_id == r.id).group_by(MEMBERS.c.state))})
        audit(session, "rollout.completed", r.id, version=f"{r.name}@{r.version}", devices=dict(counts))
    return []


def fail(session: Session, r: Rollout, step: Step, reasons: list[str], figures: dict[str, Any]) -> list[Issued]:
    """A failed gate: pause or abort (``on_failure``) and send back the wave's devices (abort: every device
    that got the version)."""
    abort = r.on_failure == "abort"
    conditions = [MEMBERS.c.rollout_id == r.id, MEMBERS.c.state.not_in((DeviceState.PENDING, DeviceState.REVERTED))]
    if not abort:
        conditions.append((MEMBERS.c.wave == r.current_wave) | (MEMBERS.c.state == DeviceState.FAILED))
    targets = [(d, p) for d, p in session.execute(select(MEMBERS.c.device_id, MEMBERS.c.previous_version)
                                                  .where(*conditions))]
    issued = revert(session, r, step, targets)
    r.state = RolloutState.ABORTED if abort else RolloutState.PAUSED
    r.reason, r.updated_at = "; ".join(reasons), step.now
    audit(session, "rollout.gate_failed", r.id, wave=r.current_wave + 1, outcome=r.state, reasons=reasons,
          figures=figures, **listed([i.device_id for i in issued], "reverted"))
    return issued


def finish_abort(session: Session, r: Rollout, step: Step) -> list[Issued]:
    """An operator's abort: every device that was sent the version goes back to its previous one."""
    targets = [(d, p) for d, p in session.execute(select(MEMBERS.c.device_id, MEMBERS.c.previous_version).where(
        MEMBERS.c.rollout_id == r.id, MEMBERS.c.state.not_in((DeviceState.PENDING, DeviceState.REVERTED))))]
    issued = revert(session, r, step, targets)
    r.state, r.updated_at = RolloutState.ABORTED, step.now
    audit(session, "rollout.aborted", r.id, reason=r.reason, **listed([d for d, _ in targets], "reverted"))
    return issued
