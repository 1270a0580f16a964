"""Rollout operations behind the API: create, pause, resume, abort, and the status view.

They only change rows — one rollout row and a wake-up note each, a short transaction whatever the size
of the fleet — and the controller (one acting server process, in its own thread) does everything else:
it picks the members, signs and publishes their desired states. So an API call never waits on a fan-out
nor races the controller's step over what was sent to whom.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, cast, func, select
from sqlalchemy.orm import Session

from edgeml.errors import RolloutError
from edgeml.fleet.credentials import new_id
from edgeml.fleet.rollouts import wakeups
from edgeml.fleet.rollouts.gates import Gates
from edgeml.fleet.rollouts.health import HealthSource
from edgeml.fleet.rollouts.plan import Selector, parse_waves, wave_sizes
from edgeml.fleet.store.models import AuditEntry, Bundle, Device, Rollout, RolloutDevice, utcnow
from edgeml.protocol import RolloutDeviceState as DeviceState
from edgeml.protocol import RolloutState

DEVICE_STATES = tuple(DeviceState)
FINAL_STATES = (RolloutState.COMPLETED, RolloutState.ABORTED)
LIVE_STATES = (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.ABORTING)


@dataclass(frozen=True)
class RolloutSpec:
    selector: Selector
    waves: list[int]
    gates: Gates
    observe_s: float = 600.0
    wave_timeout_s: float = 1800.0
    on_failure: str = "pause"
    probation: dict[str, Any] | None = None


def matching_devices(session: Session, selector: Selector) -> list[str]:
    """The enrolled devices a selector picks, in rollout order (enrolment time, then id). The database
    filters the group (indexed) and, on the JSON text, the tag; the tag is confirmed here on the decoded
    list, so only the tagged devices' tags are decoded."""
    query = _selected(select(Device.id), selector).order_by(Device.enrolled_at, Device.id)
    if selector.tag is None:
        return list(session.scalars(query))
    return [d for d, tags in session.execute(query.add_columns(Device.tags)) if selector.tag in (tags or [])]


def count_matching(session: Session, selector: Selector) -> int:
    """How many devices the selector picks now, counted by the database (the API's answer at creation)."""
    return int(session.scalar(_selected(select(func.count()).select_from(Device), selector)) or 0)


def _selected(query: Select[Any], selector: Selector) -> Select[Any]:
    query = query.where(Device.revoked_at.is_(None))
    if selector.group is not None:
        query = query.where(Device.group == selector.group)
    if selector.tag is not None:   # the JSON text holds the tag as a quoted string (json.dumps, as stored)
        query = query.where(cast(Device.tags, String).contains(json.dumps(selector.tag)))
    return query


def create(session: Session, bundle: Bundle, spec: RolloutSpec, actor: str) -> tuple[Rollout, int]:
    """A running rollout of ``bundle`` over the devices the selector picks, in waves, and how many it
    picks now. Only the rollout row is written: the controller gives it its members (the devices the
    selector picks when it does) and sends their desired states."""
    parse_waves(spec.waves)
    if spec.on_failure not in ("pause", "abort"):
        raise RolloutError(f"on_failure must be 'pause' or 'abort', not {spec.on_failure!r}")
    busy = session.scalars(select(Rollout).join(Bundle, Rollout.bundle_id == Bundle.id)
                           .where(Bundle.name == bundle.name, Rollout.state.in_(LIVE_STATES))).first()
    if busy is not None:
        raise RolloutError(f"rollout {busy.id} of {bundle.name} is {busy.state}: abort it "
                           f"('edgeml-fleet rollout abort {busy.id}') or let it finish first")
    devices = count_matching(session, spec.selector)
    if not devices:
        raise RolloutError(f"no enrolled device matches {spec.selector.describe()} (see 'edgeml-fleet devices list')")
    now = utcnow()
    rollout = Rollout(id=new_id("ro-"), bundle_id=bundle.id, state=RolloutState.RUNNING, created_at=now,
                      name=bundle.name, version=bundle.version,
                      selector=spec.selector.to_json(), waves=list(spec.waves),
                      gates=spec.gates.to_json(), probation=dict(spec.probation or {}), observe_s=spec.observe_s,
                      wave_timeout_s=spec.wave_timeout_s, on_failure=spec.on_failure, current_wave=0,
                      created_by=actor, updated_at=now)
    session.add(rollout)
    session.flush()
    wakeups.note(session, [wakeups.rollout_key(rollout.id, wakeups.CONTROL)])
    return rollout, devices


def get(session: Session, rollout_id: str) -> Rollout:
    row = session.get(Rollout, rollout_id, with_for_update=True)
    if row is None:
        raise LookupError(f"no rollout '{rollout_id}' (see 'edgeml-fleet rollout list')")
    return row


def pause(session: Session, rollout_id: str) -> Rollout:
    row = get(session, rollout_id)
    if row.state != RolloutState.RUNNING:
        raise RolloutError(f"rollout {row.id} is {row.state}; only a running rollout can be paused")
    row.state, row.reason, row.updated_at = RolloutState.PAUSED, "paused by an operator", utcnow()
    wakeups.note(session, [wakeups.rollout_key(row.id, wakeups.CONTROL)])
    return row


def resume(session: Session, rollout_id: str) -> Rollout:
    """Continue from the wave where it stopped; the observation of that wave starts again. Devices sent back
    stay on their previous version; the gates are judged again on the others."""
    row = get(session, rollout_id)
    if row.state != RolloutState.PAUSED:
        raise RolloutError(f"rollout {row.id} is {row.state}; only a paused rollout can be resumed")
    row.state, row.reason, row.updated_at = RolloutState.RUNNING, None, utcnow()
    row.wave_started_at = row.observe_started_at = None
    wakeups.note(session, [wakeups.rollout_key(row.id, wakeups.CONTROL)])
    return row


def abort(session: Session, rollout_id: str, reason: str) -> Rollout:
    """Stop; the controller then sends every device that got the new version back to its previous one."""
    row = get(session, rollout_id)
    if row.state in FINAL_STATES or row.state == RolloutState.ABORTING:
        raise RolloutError(f"rollout {row.id} is already {row.state}")
    row.state, row.reason, row.updated_at = RolloutState.ABORTING, reason, utcnow()
    wakeups.note(session, [wakeups.rollout_key(row.id, wakeups.CONTROL)])
    return row


def summary(row: Rollout, session: Session, planned: int | None = None) -> dict[str, Any]:
    """The rollout with per-state device counts; ``planned`` (devices the selector picked at creation)
    stands in for the members until the controller has given it its members."""
    counts = Counter({s: n for s, n in session.execute(select(RolloutDevice.state, func.count())
                                                       .where(RolloutDevice.rollout_id == row.id)
                                                       .group_by(RolloutDevice.state))})
    waves = session.scalar(select(RolloutDevice.wave).where(RolloutDevice.rollout_id == row.id)
                           .order_by(RolloutDevice.wave.desc()).limit(1))
    if not counts and planned:
        counts[DeviceState.PENDING], waves = planned, len(wave_sizes(planned, row.waves)) - 1
    return {"id": row.id, "bundle": f"{row.name}@{row.version}", "bundle_id": row.bundle_id, "state": row.state,
            "selector": row.selector, "wave": row.current_wave + 1, "waves": (waves or 0) + 1,
            "devices": sum(counts.values()), "counts": {s: counts.get(s, 0) for s in DEVICE_STATES if counts.get(s)},
            "reason": row.reason, "created_at": row.created_at, "created_by": row.created_by,
            "updated_at": row.updated_at}


DEVICE_LIST_LIMIT = 1000   # members listed in a status by default (the counts cover all of them)


def status(row: Rollout, session: Session, health: HealthSource | None, now: datetime | None = None,
           device_limit: int = DEVICE_LIST_LIMIT) -> dict[str, Any]:
    """Waves with per-state device counts, the live gate figures of the current wave, the decisions, and
    the first ``device_limit`` members (by wave, then id): a status of a 10,000-device rollout stays small."""
    per_wave: dict[int, Counter[str]] = {}
    for w, state, n in session.execute(select(RolloutDevice.wave, RolloutDevice.state, func.count())
                                       .where(RolloutDevice.rollout_id == row.id)
                                       .group_by(RolloutDevice.wave, RolloutDevice.state)):
        per_wave.setdefault(w, Counter())[state] += n
    total = sum(sum(c.values()) for c in per_wave.values())
    sizes = wave_sizes(total, row.waves) if total else []
    waves = []
    for w in sorted(per_wave):
        state = ("done" if w < row.current_wave or row.state == "completed"
                 else "current" if w == row.current_wave else "waiting")
        planned = w < len(row.waves) and len(sizes) == len(row.waves)
        waves.append({"wave": w + 1, "percent": row.waves[w] if planned else None,
                      "devices": sum(per_wave[w].values()), "state": state, "counts": dict(per_wave[w])})
    members = session.execute(select(RolloutDevice.device_id, RolloutDevice.wave, RolloutDevice.state,
                                     RolloutDevice.previous_version, RolloutDevice.reason)
                              .where(RolloutDevice.rollout_id == row.id)
                              .order_by(RolloutDevice.wave, RolloutDevice.device_id).limit(device_limit)).all()
    decisions = [{"at": a.at, "action": a.action, "details": a.details} for a in session.scalars(
        select(AuditEntry).where(AuditEntry.target == row.id).order_by(AuditEntry.id))]
    return {**summary(row, session), "gates": row.gates, "observe_s": row.observe_s,
            "wave_timeout_s": row.wave_timeout_s, "on_failure": row.on_failure, "probation": row.probation,
            "wave_started_at": row.wave_started_at, "observe_started_at": row.observe_started_at,
            "wave_list": waves, "live": _live(row, session, health),
            "device_list": [{"device": d, "wave": w + 1, "state": state, "previous": previous, "reason": reason}
                            for d, w, state, previous, reason in members],
            "device_list_total": total, "decisions": decisions}


def _live(row: Rollout, session: Session, health: HealthSource | None) -> dict[str, Any] | None:
    """The new version's figures on the installed devices since the current wave's observation began."""
    if health is None or row.state not in (RolloutState.RUNNING, RolloutState.PAUSED):
        return None
    installed = list(session.scalars(select(RolloutDevice.device_id).where(
        RolloutDevice.rollout_id == row.id, RolloutDevice.wave <= row.current_wave,
        RolloutDevice.state == DeviceState.INSTALLED)))
    if not installed:
        return None
    since = row.observe_started_at or row.wave_started_at or row.created_at
    h = health.version_health(session, model=row.name, version=row.version, device_ids=installed, since=since)
    return {"devices": h.devices, "requests": h.requests, "errors": h.errors,
            "error_rate": round(h.error_rate, 4), "p50_ms": h.p50_ms, "p95_ms": h.p95_ms, "drift": h.drift}
