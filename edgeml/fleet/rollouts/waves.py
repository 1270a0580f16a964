"""One rollout's transitions, in bulk: plan its members, add devices that joined its selector, send the
due desired states, take in the devices' progress, judge the current wave, send devices back.

Each function works in the caller's transaction on one rollout row the caller holds, and reads and
writes members as columns and executemany statements, never one ORM object per device: a wave of
10,000 devices is a handful of statements. Audit details name at most :data:`LISTED` devices (with the
total), so a decision over a big wave stays a small row.

The rules (what the controller's docstring lists) are unchanged from the one-device-at-a-time version;
the controller decides *when* these run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from edgeml.bundle.keys import SigningKey
from edgeml.fleet.rollouts.desired_docs import Issued, issue_many, model_entry
from edgeml.fleet.rollouts.gates import Coverage, Gates, Verdict, judge
from edgeml.fleet.rollouts.health import HealthSource
from edgeml.fleet.rollouts.plan import Selector, assign_waves, wave_sizes
from edgeml.fleet.rollouts.service import matching_devices
from edgeml.fleet.store.models import AuditEntry, Bundle, Device, Rollout, RolloutDevice
from edgeml.protocol import RolloutDeviceState as DeviceState
from edgeml.protocol import RolloutState, UpdateState

ACTOR = "rollout-controller"
LISTED = 100          # device ids written into one audit entry; the total goes beside them
CHUNK = 2000          # ids per IN (...) list
IN_FLIGHT = (DeviceState.SENT, DeviceState.UPDATING)
WAITING = (DeviceState.PENDING, *IN_FLIGHT)
CLOCK_SKEW = timedelta(seconds=30)
# Agent update states (edgeml.protocol, reported in `update` events) → the device's state in the rollout.
EVENT_STATES: dict[str, DeviceState] = {
    UpdateState.COMMITTED: DeviceState.INSTALLED, UpdateState.FAILED: DeviceState.FAILED,
    UpdateState.ROLLING_BACK: DeviceState.FAILED,
}
MEMBERS = cast(Table, RolloutDevice.__table__)


@dataclass(frozen=True)
class Step:
    """What one step needs besides the session: the fleet key (loaded once per pass), the telemetry, now."""

    key: SigningKey
    health: HealthSource
    now: datetime


def installed_version(installed: dict[str, Any] | None, model: str) -> str | None:
    """The version a device runs, as enrolment and the ingest record it (``{"bundles": {model: version}}``;
    a bare ``{model: version}`` is read too)."""
    installed = installed or {}
    bundles = installed.get("bundles")
    found = bundles.get(model) if isinstance(bundles, dict) else None
    if isinstance(found, str):
        return found
    value = installed.get(model)
    return value if isinstance(value, str) else None


def failure(body: dict[str, Any], *, rolled_back: bool) -> str:
    """Why a device failed an update, from its agent's event: it switched and then rolled back by itself,
    or it refused the version before switching (download, verification, smoke test) and never ran it."""
    cause = str(body.get("reason") or "no reason given")
    if rolled_back or body.get("source") == UpdateState.ROLLING_BACK:
        return f"rolled back by itself: {cause}"
    step = body.get("source")
    return f"refused it in {step}: {cause}" if step else f"failed: {cause}"


def audit(session: Session, action: str, target: str, **details: Any) -> None:
    session.add(AuditEntry(actor=ACTOR, action=action, target=target, source="fleet", details=details))


def listed(ids: Sequence[str], name: str = "devices") -> dict[str, Any]:
    ids = sorted(ids)
    return {name: ids[:LISTED], f"{name}_total": len(ids)} if len(ids) > LISTED else {name: ids}


def chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def set_members(session: Session, rollout_id: str, changes: list[dict[str, Any]]) -> None:
    """Update members by device id; every dict holds ``b_device`` and the same other columns."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in changes:
        groups.setdefault(tuple(sorted(change)), []).append(change)
    for columns, rows in groups.items():
        values: dict[str, Any] = {c: bindparam(c) for c in columns if c != "b_device"}
        session.execute(update(MEMBERS).where(MEMBERS.c.rollout_id == rollout_id,
                                              MEMBERS.c.device_id == bindparam("b_device")).values(values), rows)


# -- membership ----------------------------------------------------------------------------------------

def plan(session: Session, r: Rollout, now: datetime) -> bool:
    """Members for a rollout the API only recorded: the devices its selector picks now, in waves. False
    when it already has them."""
    if session.scalars(select(MEMBERS.c.device_id).where(MEMBERS.c.rollout_id == r.id).limit(1)).first():
        return False
    selector = Selector(**r.selector)
    devices = matching_devices(session, selector)
    if not devices:
        r.state, r.updated_at = RolloutState.ABORTED, now
        r.reason = f"no enrolled device matches {selector.describe()} any more"
        audit(session, "rollout.aborted", r.id, reason=r.reason)
        return True
    session.execute(insert(MEMBERS), [{"rollout_id": r.id, "device_id": d, "wave": w, "state": DeviceState.PENDING,
                                       "updated_at": now} for d, w in assign_waves(devices, r.waves).items()])
    audit(session, "rollout.planned", r.id, devices=len(devices), waves=wave_sizes(len(devices), r.waves))
    return True


def add_joiners(session: Session, r: Rollout, now: datetime) -> list[str]:
    """Devices that joined the selector since the rollout began join its current wave."""
    members = set(session.scalars(select(MEMBERS.c.device_id).where(MEMBERS.c.rollout_id == r.id)))
    joined = [d for d in matching_devices(session, Selector(**r.selector)) if d not in members]
    if joined:
        session.execute(insert(MEMBERS), [{"rollout_id": r.id, "device_id": d, "wave": r.current_wave,
                                           "state": DeviceState.PENDING, "updated_at": now} for d in joined])
        audit(session, "rollout.devices_joined", r.id, wave=r.current_wave + 1, **listed(joined))
    return joined


def installed_versions(session: Session, device_ids: Sequence[str], model: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for chunk in chunks(device_ids):
        query = select(Device.id, Device.installed).where(Device.id.in_(chunk))
        out.update((d, installed_version(i, model)) for d, i in session.execute(query))
    return out


# -- sending -------------------------------------------------------------------------------------------

def send_due(session: Session, r: Rollout, step: Step, limit: int) -> list[Issued]:
    """Sign and store the new version's desired state for up to ``limit`` pending devices of the waves
    up to the current one; they become ``sent``. The caller publishes the result after committing."""
    due = session.execute(select(MEMBERS.c.device_id, MEMBERS.c.previous_version)
                          .where(MEMBERS.c.rollout_id == r.id, MEMBERS.c.state == DeviceState.PENDING,
                                 MEMBERS.c.wave <= r.current_wave)
                          .order_by(MEMBERS.c.wave, MEMBERS.c.device_id).limit(limit)).all()
    if not due:
        return []
    bundle = session.get(Bundle, r.bundle_id)
    assert bundle is not None  # the bundle delete guard keeps it while a rollout uses it
    probation = {**Gates.from_json(r.gates).probation(), **r.probation}
    ids = [d for d, _ in due]
    known = installed_versions(session, [d for d, previous in due if previous is None], r.name)
    issued = issue_many(session, step.key, ids, model_entry(bundle), rollout_id=r.id, probation=probation,
                        now=step.now.timestamp())
    set_members(session, r.id, [{"b_device": d, "state": DeviceState.SENT, "sent_at": step.now,
                                 "updated_at": step.now, "previous_version": previous or known.get(d)}
                                for d, previous in due])
    return issued


def revert(session: Session, r: Rollout, step: Step, targets: Sequence[tuple[str, str | None]]) -> list[Issued]:
    """Send devices back to the version they ran before (desired state with rollback=true), one
    executemany per previous version; all of them end ``reverted``."""
    current = session.get(Bundle, r.bundle_id)
    by_version: dict[str | None, list[str]] = {}
    for device_id, previous in targets:
        by_version.setdefault(previous, []).append(device_id)
    issued: list[Issued] = []
    changes: list[dict[str, Any]] = []
    for version, device_ids in by_version.items():
        previous_bundle = _previous_bundle(session, r, version, current.target if current else None)
        if previous_bundle is None:
            reason = (f"cannot send it back: no bundle {r.name}@{version} in the registry" if version
                      else "cannot send it back: it ran no earlier version")
            changes += [{"b_device": d, "state": DeviceState.REVERTED, "updated_at": step.now, "reason": reason}
                        for d in device_ids]
            continue
        issued += issue_many(session, step.key, device_ids, model_entry(previous_bundle, rollback=True),
                             rollout_id=r.id, probation={}, now=step.now.timestamp())
        changes += [{"b_device": d, "state": DeviceState.REVERTED, "updated_at": step.now} for d in device_ids]
    set_members(session, r.id, changes)
    return issued


def _previous_bundle(session: Session, r: Rollout, version: str | None, target: str | None) -> Bundle | None:
    if version is None:
        return None
    candidates = list(session.scalars(select(Bundle).where(Bundle.name == r.name, Bundle.version == version)
                                      .order_by(Bundle.uploaded_at.desc())))
    return next((b for b in candidates if b.target == target), candidates[0] if candidates else None)


# -- progress ------------------------------------------------------------------------------------------

def absorb_progress(session: Session, r: Rollout, step: Step) -> None:
    """Where each device still in flight (or counted offline) stands, from its agent's update events and
    the installed version the ingest keeps."""
    watched = session.execute(select(MEMBERS.c.device_id, MEMBERS.c.state, MEMBERS.c.sent_at,
                                     MEMBERS.c.previous_version)
                              .where(MEMBERS.c.rollout_id == r.id, MEMBERS.c.wave <= r.current_wave,
                                     MEMBERS.c.state.in_((*IN_FLIGHT, DeviceState.OFFLINE)))).all()
    if not watched:
        return
    # device clocks may lag the server's a little; events from before the send are older attempts
    since = min((s for _, _, s, _ in watched if s is not None), default=r.created_at) - CLOCK_SKEW
    latest, rolled_back = _latest_events(session, r, step, [d for d, _, _, _ in watched], since)
    installed = installed_versions(session, [d for d, _, _, _ in watched], r.name)
    changes = []
    for device_id, state, _, previous in watched:
        body = latest.get(device_id)
        new_state = EVENT_STATES.get(str(body.get("state")), DeviceState.UPDATING) if body is not None else None
        change: dict[str, Any] = {}
        if previous is None and body is not None and body.get("previous"):
            # sent before the fleet knew what it ran (e.g. it enrolled mid-rollout): its agent says
            change["previous_version"] = str(body["previous"])
        if new_state in (None, DeviceState.UPDATING) and installed.get(device_id) == r.version:
            new_state = DeviceState.INSTALLED  # no event (e.g. it already ran this version), but the ingest saw it
        if new_state is not None and new_state != state:
            change.update(state=new_state, updated_at=step.now)
            if new_state == DeviceState.FAILED and body is not None:
                change["reason"] = failure(body, rolled_back=device_id in rolled_back)
        if change:
            changes.append({"b_device": device_id, **change})
    set_members(session, r.id, changes)


def _latest_events(session: Session, r: Rollout, step: Step, device_ids: list[str],
                   since: datetime) -> tuple[dict[str, dict[str, Any]], set[str]]:
    latest: dict[str, dict[str, Any]] = {}
    rolled_back: set[str] = set()
    for chunk in chunks(device_ids):
        for event in step.health.update_events(session, device_ids=chunk, since=since):
            # "idle" follows both committed and failed: it says nothing about how the update ended
            if (event.body.get("model") == r.name and event.body.get("version") == r.version
                    and event.body.get("state") != UpdateState.IDLE):
                latest[event.device_id] = event.body
                if event.body.get("state") == UpdateState.ROLLING_BACK:
                    rolled_back.add(event.device_id)
    return latest, rolled_back


# -- judging -------------------------------------------------------------------------------------------

def member_ids(session: Session, r: Rollout, *conditions: Any) -> list[str]:
    return list(session.scalars(select(MEMBERS.c.device_id).where(MEMBERS.c.rollout_id == r.id, *conditions)
                                .order_by(MEMBERS.c.device_id)))


def wave_counts(session: Session, r: Rollout) -> tuple[Counter[str], Counter[str]]:
    """Device states of the current wave, and of every wave up to it."""
    wave: Counter[str] = Counter()
    upto: Counter[str] = Counter()
    query = select(MEMBERS.c.wave, MEMBERS.c.state, func.count()).where(
        MEMBERS.c.rollout_id == r.id, MEMBERS.c.wave <= r.current_wave).group_by(MEMBERS.c.wave, MEMBERS.c.state)
    for w, state, n in session.execute(query):
        upto[state] += n
        if w == r.current_wave:
            wave[state] += n
    return wave, upto


def verdict(session: Session, r: Rollout, health: HealthSource) -> Verdict:
    """The gates on the telemetry of the installed devices (waves up to the current one) since the
    observation began, against the previous version's health across the fleet since shortly before the
    rollout began; with how many of the current wave's installed devices reported at all."""
    gates = Gates.from_json(r.gates)
    since = r.observe_started_at or r.created_at
    installed = member_ids(session, r, MEMBERS.c.wave <= r.current_wave, MEMBERS.c.state == DeviceState.INSTALLED)
    in_wave = member_ids(session, r, MEMBERS.c.wave == r.current_wave, MEMBERS.c.state == DeviceState.INSTALLED)
    new = health.version_health(session, model=r.name, version=r.version, device_ids=installed, since=since)
    wave_health = new if len(in_wave) == len(installed) else health.version_health(
        session, model=r.name, version=r.version, device_ids=in_wave, since=since)
    previous_version = session.scalars(
        select(MEMBERS.c.previous_version).where(MEMBERS.c.rollout_id == r.id, MEMBERS.c.wave <= r.current_wave,
                                                 MEMBERS.c.state == DeviceState.INSTALLED,
                                                 MEMBERS.c.previous_version.is_not(None))
        .group_by(MEMBERS.c.previous_version).order_by(func.count().desc()).limit(1)).first()
    previous = None
    if previous_version:
        baseline_since = r.created_at - timedelta(seconds=max(r.observe_s, 60.0))
        previous = health.version_health(session, model=r.name, version=previous_version, device_ids=None,
                                         since=baseline_since)
    return judge(gates, new, previous, Coverage(installed=len(in_wave), reporting=wave_health.devices))
