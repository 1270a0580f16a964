"""The rollout controller: a background loop in the fleet server that moves rollouts forward.

Every tick (~1 s) the controller that holds the ``rollouts`` lease (one row in the database, renewed
each tick, so with several server processes on one PostgreSQL only one acts) runs one idempotent step
per active rollout, each in its own transaction:

1. devices that joined the selector since the rollout began join its current wave;
2. the agents' update events (and the installed versions the ingest keeps) say where each device is;
3. devices of waves up to the current one that have not been sent the new version get a signed
   desired state (published after the transaction commits, retained, QoS 1);
4. the current wave is judged: any device whose agent rolled back fails the gate at once; devices that
   do not answer within the wave timeout are counted offline, not waited on; once the rest installed,
   the observation window runs and the gates are judged on the telemetry received in it;
5. a pass advances the wave (the last one completes the rollout); a failure pauses or aborts the
   rollout (``on_failure``) and sends the wave's devices back to their previous version.

Every decision is written to the audit log with the numbers behind it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgeml.bundle.keys import SigningKey
from edgeml.fleet.rollouts.desired_docs import Issued, fleet_signing_key, issue, model_entry
from edgeml.fleet.rollouts.gates import Gates, Verdict, judge
from edgeml.fleet.rollouts.health import HealthSource, TelemetryHealth
from edgeml.fleet.rollouts.plan import Selector
from edgeml.fleet.rollouts.publisher import DesiredPublisher
from edgeml.fleet.store import Store
from edgeml.fleet.store.models import (
    AuditEntry,
    Bundle,
    DesiredDocument,
    Device,
    Lease,
    Rollout,
    RolloutDevice,
)
from edgeml.protocol import RolloutDeviceState as DeviceState
from edgeml.protocol import RolloutState, UpdateState

log = logging.getLogger(__name__)

LEASE = "rollouts"
ACTOR = "rollout-controller"
ACTIVE_STATES = (RolloutState.RUNNING, RolloutState.ABORTING)
IN_FLIGHT = (DeviceState.SENT, DeviceState.UPDATING)
CLOCK_SKEW = timedelta(seconds=30)
# Agent update states (edgeml.protocol, reported in `update` events) → the device's state in the rollout.
EVENT_STATES: dict[str, DeviceState] = {
    UpdateState.COMMITTED: DeviceState.INSTALLED, UpdateState.FAILED: DeviceState.FAILED,
    UpdateState.ROLLING_BACK: DeviceState.FAILED,
}


def installed_version(device: Device, model: str) -> str | None:
    """The version the device runs, as enrolment and the ingest record it (``{"bundles": {model: version}}``;
    a bare ``{model: version}`` is read too)."""
    bundles = device.installed.get("bundles")
    found = bundles.get(model) if isinstance(bundles, dict) else None
    if isinstance(found, str):
        return found
    value = device.installed.get(model)
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


def acquire_lease(store: Store, holder: str, ttl_s: float, now: datetime) -> bool:
    """Take or renew the lease; False while another live holder has it."""
    expires = now + timedelta(seconds=ttl_s)
    with store.session() as session:
        if session.get(Lease, LEASE) is None:
            try:
                with session.begin_nested():
                    session.add(Lease(name=LEASE, holder=holder, expires_at=expires))
                return True
            except IntegrityError:
                pass  # another process created it a moment ago
        result = session.execute(update(Lease).where(Lease.name == LEASE, or_(Lease.holder == holder,
                                                                             Lease.expires_at < now))
                                 .values(holder=holder, expires_at=expires))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release_lease(store: Store, holder: str) -> None:
    with store.session() as session:
        session.execute(update(Lease).where(Lease.name == LEASE, Lease.holder == holder)
                        .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC)))


class RolloutController:
    def __init__(self, store: Store, publisher: DesiredPublisher, *, health: HealthSource | None = None,
                 tick_s: float = 1.0, lease_ttl_s: float = 10.0, holder: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.publisher = store, publisher
        self.health: HealthSource = health or TelemetryHealth()
        self.tick_s, self.lease_ttl_s, self.clock = tick_s, lease_ttl_s, clock
        self.holder = holder or uuid.uuid4().hex[:16]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> SigningKey:
        # read each time, not cached: another process may have rotated the fleet key
        return fleet_signing_key(self.store)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # -- loop ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgeml-rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        try:
            release_lease(self.store, self.holder)  # a successor need not wait for the lease to expire
        except Exception:  # the store may already be closed; the lease then simply expires
            log.debug("could not release the rollout lease", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # one bad tick (database hiccup) must not end the loop
                log.exception("rollout controller tick failed; retrying next tick")

    def tick(self) -> bool:
        """One pass over the active rollouts; False when another server holds the lease."""
        if not acquire_lease(self.store, self.holder, self.lease_ttl_s, self.now()):
            return False
        with self.store.session() as session:
            ids = list(session.scalars(select(Rollout.id).where(Rollout.state.in_(ACTIVE_STATES))
                                       .order_by(Rollout.created_at)))
        for rollout_id in ids:
            with self.store.session() as session:
                rollout = session.get(Rollout, rollout_id, with_for_update=True)
                if rollout is not None and rollout.state in ACTIVE_STATES:
                    self.step(session, rollout)
        self.publish_pending()
        return True

    def publish_pending(self) -> None:
        """Publish every document not yet handed to the broker (all of them after a reconnect)."""
        resync = self.publisher.take_resync()
        with self.store.session() as session:
            query = select(DesiredDocument)
            if not resync:
                query = query.where(DesiredDocument.published_at.is_(None))
            for doc in session.scalars(query):
                if self.publisher.publish(doc.device_id, doc.wire.encode()):
                    doc.published_at = self.now()

    # -- one rollout ---------------------------------------------------------------------------------
    def step(self, session: Session, r: Rollout) -> list[Issued]:
        now = self.now()
        members = {m.device_id: m
                   for m in session.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id))}
        if r.state == RolloutState.ABORTING:
            issued = self._revert(session, r, [m for m in members.values() if m.state != DeviceState.PENDING], now)
            r.state, r.updated_at = RolloutState.ABORTED, now
            audit(session, "rollout.aborted", r.id, reason=r.reason,
                  reverted=sorted(m.device_id for m in members.values() if m.state == DeviceState.REVERTED))
            return issued
        self._add_joiners(session, r, members, now)
        devices = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(list(members))))}
        self._absorb_progress(session, r, members, devices)
        issued = self._send_due(session, r, members, devices, now)
        issued += self._judge_wave(session, r, members, now)
        return issued

    def _add_joiners(self, session: Session, r: Rollout, members: dict[str, RolloutDevice], now: datetime) -> None:
        selector = Selector(**r.selector)
        joined = []
        for device in session.scalars(select(Device).where(Device.revoked_at.is_(None))
                                      .order_by(Device.enrolled_at, Device.id)):
            if device.id not in members and selector.matches(device.group, device.tags):
                members[device.id] = RolloutDevice(rollout_id=r.id, device_id=device.id, wave=r.current_wave,
                                                   state=DeviceState.PENDING, updated_at=now)
                session.add(members[device.id])
                joined.append(device.id)
        if joined:
            audit(session, "rollout.devices_joined", r.id, wave=r.current_wave + 1, devices=joined)

    def _absorb_progress(self, session: Session, r: Rollout, members: dict[str, RolloutDevice],
                         devices: dict[str, Device]) -> None:
        settled = (DeviceState.INSTALLED, DeviceState.FAILED, DeviceState.OFFLINE)
        watched = [m for m in members.values() if m.state in (*IN_FLIGHT, *settled)]
        if not watched:
            return
        # device clocks may lag the server's a little; events from before the send are older attempts
        since = min((m.sent_at for m in watched if m.sent_at is not None), default=r.created_at) - CLOCK_SKEW
        latest: dict[str, dict[str, Any]] = {}
        rolled_back: set[str] = set()
        for event in self.health.update_events(session, device_ids=[m.device_id for m in watched], since=since):
            # "idle" follows both committed and failed: it says nothing about how the update ended
            if (event.body.get("model") == r.name and event.body.get("version") == r.version
                    and event.body.get("state") != UpdateState.IDLE):
                latest[event.device_id] = event.body
                if event.body.get("state") == UpdateState.ROLLING_BACK:
                    rolled_back.add(event.device_id)
        for m in watched:
            body: dict[str, Any] | None = latest.get(m.device_id)
            state = None
            if body is not None:
                state = EVENT_STATES.get(str(body.get("state")), DeviceState.UPDATING)
                if m.previous_version is None and body.get("previous"):
                    # sent before the fleet knew what it ran (e.g. it enrolled mid-rollout): its agent says
                    m.previous_version = str(body["previous"])
            device = devices.get(m.device_id)
            if (state in (None, DeviceState.UPDATING) and device is not None
                    and installed_version(device, r.name) == r.version):
                state = DeviceState.INSTALLED  # no event (e.g. it already ran this version), but the ingest saw it
            if state is not None and state != m.state:
                m.state, m.updated_at = state, self.now()
                if state == DeviceState.FAILED and body is not None:
                    m.reason = failure(body, rolled_back=m.device_id in rolled_back)

    def _send_due(self, session: Session, r: Rollout, members: dict[str, RolloutDevice], devices: dict[str, Device],
                  now: datetime) -> list[Issued]:
        due = [m for m in members.values() if m.state == DeviceState.PENDING and m.wave <= r.current_wave]
        if not due:
            return []
        bundle = session.get(Bundle, r.bundle_id)
        assert bundle is not None  # the bundle delete guard keeps it while a rollout uses it
        probation = {**Gates.from_json(r.gates).probation(), **r.probation}
        issued = []
        for m in due:
            device = devices.get(m.device_id) or session.get(Device, m.device_id)
            if m.previous_version is None and device is not None:
                m.previous_version = installed_version(device, r.name)
            issued.append(issue(session, self.key, m.device_id, model_entry(bundle), rollout_id=r.id,
                                probation=probation, now=now.timestamp()))
            m.state, m.sent_at, m.updated_at = DeviceState.SENT, now, now
        return issued

    def _judge_wave(self, session: Session, r: Rollout, members: dict[str, RolloutDevice],
                    now: datetime) -> list[Issued]:
        w = r.current_wave
        upto = [m for m in members.values() if m.wave <= w]
        wave = [m for m in upto if m.wave == w]
        if r.wave_started_at is None:
            r.wave_started_at, r.updated_at = now, now
            audit(session, "rollout.wave_started", r.id, wave=w + 1, devices=sorted(m.device_id for m in wave))
        failed = [m for m in upto if m.state == DeviceState.FAILED]
        if failed:
            reasons = [f"device {m.device_id} {m.reason or 'failed'}" for m in failed]
            return self._fail(session, r, members, reasons, {"failed_devices": len(failed)}, now)
        waiting = [m for m in wave if m.state in IN_FLIGHT]
        timed_out = (now - r.wave_started_at).total_seconds() >= r.wave_timeout_s
        if waiting and not timed_out:
            return []
        if waiting:
            for m in waiting:
                m.state, m.updated_at = DeviceState.OFFLINE, now
                m.reason = f"no answer within the wave timeout ({r.wave_timeout_s:g} s)"
            audit(session, "rollout.devices_offline", r.id, wave=w + 1, devices=sorted(m.device_id for m in waiting),
                  wave_timeout_s=r.wave_timeout_s)
        installed = [m for m in upto if m.state == DeviceState.INSTALLED]
        if not any(m.state == DeviceState.INSTALLED for m in wave):
            if any(m.state == DeviceState.OFFLINE for m in wave):
                return self._fail(session, r, members, [f"no device of wave {w + 1} installed {r.version} within "
                                                        f"{r.wave_timeout_s:g} s"], {"offline": len(wave)}, now)
            return self._advance(session, r, members, now, {"note": "every device of this wave was sent back"})
        if r.observe_started_at is None:
            r.observe_started_at, r.updated_at = now, now
            audit(session, "rollout.observing", r.id, wave=w + 1, installed=len(installed), observe_s=r.observe_s)
            return []
        observed = (now - r.observe_started_at).total_seconds()
        if observed < r.observe_s:
            return []
        verdict = self.verdict(session, r, [m.device_id for m in installed], members)
        if not verdict.enough_traffic and observed < r.wave_timeout_s:
            return []  # wait for traffic, but not past the wave timeout
        if not verdict.passed:
            return self._fail(session, r, members, list(verdict.reasons), verdict.figures, now)
        return self._advance(session, r, members, now, verdict.figures)

    def verdict(self, session: Session, r: Rollout, device_ids: Sequence[str],
                members: dict[str, RolloutDevice]) -> Verdict:
        """The gates on the telemetry of ``device_ids`` since the observation began, against the previous
        version's health across the fleet since shortly before the rollout began."""
        gates = Gates.from_json(r.gates)
        since = r.observe_started_at or r.created_at
        new = self.health.version_health(session, model=r.name, version=r.version, device_ids=device_ids, since=since)
        previous_versions = Counter(m.previous_version for m in members.values()
                                    if m.device_id in device_ids and m.previous_version)
        previous = None
        if previous_versions:
            baseline_since = r.created_at - timedelta(seconds=max(r.observe_s, 60.0))
            previous = self.health.version_health(session, model=r.name, version=previous_versions.most_common(1)[0][0],
                                                  device_ids=None, since=baseline_since)
        return judge(gates, new, previous)

    def _advance(self, session: Session, r: Rollout, members: dict[str, RolloutDevice], now: datetime,
                 figures: dict[str, Any]) -> list[Issued]:
        waves = max((m.wave for m in members.values()), default=0) + 1
        audit(session, "rollout.wave_passed", r.id, wave=r.current_wave + 1, of=waves, figures=figures)
        r.current_wave += 1
        r.wave_started_at = r.observe_started_at = None
        r.updated_at = now
        if r.current_wave >= waves:
            r.state = RolloutState.COMPLETED
            counts = Counter(m.state for m in members.values())
            audit(session, "rollout.completed", r.id, version=f"{r.name}@{r.version}", devices=dict(counts))
        return []

    def _fail(self, session: Session, r: Rollout, members: dict[str, RolloutDevice], reasons: list[str],
              figures: dict[str, Any], now: datetime) -> list[Issued]:
        abort = r.on_failure == "abort"
        if abort:
            targets = [m for m in members.values() if m.state != DeviceState.PENDING]
        else:
            targets = [m for m in members.values() if m.state != DeviceState.PENDING
                       and (m.wave == r.current_wave or m.state == DeviceState.FAILED)]
        issued = self._revert(session, r, targets, now)
        r.state = RolloutState.ABORTED if abort else RolloutState.PAUSED
        r.reason, r.updated_at = "; ".join(reasons), now
        audit(session, "rollout.gate_failed", r.id, wave=r.current_wave + 1, outcome=r.state, reasons=reasons,
              figures=figures, reverted=sorted(i.device_id for i in issued))
        return issued

    def _revert(self, session: Session, r: Rollout, targets: Sequence[RolloutDevice], now: datetime) -> list[Issued]:
        """Send devices back to the version they ran before (desired state with rollback=true)."""
        issued = []
        current = session.get(Bundle, r.bundle_id)
        for m in targets:
            if m.state == DeviceState.REVERTED:
                continue
            previous = self._previous_bundle(session, r, m.previous_version, current.target if current else None)
            if previous is None:
                m.reason = (f"cannot send it back: no bundle {r.name}@{m.previous_version} in the registry"
                            if m.previous_version else "cannot send it back: it ran no earlier version")
                m.state, m.updated_at = DeviceState.REVERTED, now
                continue
            issued.append(issue(session, self.key, m.device_id, model_entry(previous, rollback=True),
                                rollout_id=r.id, probation={}, now=now.timestamp()))
            m.state, m.updated_at = DeviceState.REVERTED, now
        return issued

    @staticmethod
    def _previous_bundle(session: Session, r: Rollout, version: str | None, target: str | None) -> Bundle | None:
        if version is None:
            return None
        candidates = list(session.scalars(select(Bundle).where(Bundle.name == r.name, Bundle.version == version)
                                          .order_by(Bundle.uploaded_at.desc())))
        return next((b for b in candidates if b.target == target), candidates[0] if candidates else None)
