"""The rollout controller: a thread in the fleet server that moves rollouts forward, and sleeps otherwise.

The API only records an operator's intent (a rollout row, a pause, an abort) and leaves a wake-up note
(:mod:`.wakeups`); everything that touches devices happens here, off the request path. The controller
that holds the ``rollouts`` lease (one row in the database, so with several server processes on one
PostgreSQL only one acts) steps a rollout only when something can have changed for it:

* a wake-up note: the API changed it, the ingest stored an update event of its model, or telemetry of
  its version while the wave waits for data; a device enrolled (it may join a selector); documents
  re-issued by a key rotation wait to be published;
* one of its deadlines: the wave timeout while devices install, the end of the observation window, the
  end of the wait for telemetry;
* every ``membership_s``, a look for devices that joined its selector (tags changed, another process
  enrolled them);
* after it takes over the lease (another server died), every active rollout once.

Between those it costs one read of the (empty) wake-up table every ``poll_s`` and, while a rollout is
active, a lease renewal every third of the lease's lifetime. One step of a rollout:

1. the API's new rollout gets its members: the devices the selector picks now, in waves;
2. devices that joined the selector since the rollout began join its current wave;
3. devices of waves up to the current one that have not been sent the new version get a signed desired
   state — ``fanout_chunk`` devices per transaction, each chunk published (retained, QoS 1, pipelined)
   right after its commit, and each device's document marked published when the broker acknowledges it;
4. the agents' update events (and the installed versions the ingest keeps) say where each device is;
5. the current wave is judged: any device whose agent rolled back fails the gate at once; devices that
   do not answer within the wave timeout are counted offline, not waited on; once the rest installed,
   the observation window runs and the gates are judged on the telemetry received in it — never on no
   telemetry: the observation goes on while data is missing, and the wave fails at its timeout;
6. a pass advances the wave (the last one completes the rollout); a failure pauses or aborts the
   rollout (``on_failure``) and sends the wave's devices back to their previous version.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgeml.bundle.keys import SigningKey
from edgeml.errors import FleetError
from edgeml.fleet.rollouts import decisions, wakeups, waves
from edgeml.fleet.rollouts.desired_docs import Issued, fleet_signing_key
from edgeml.fleet.rollouts.health import HealthSource, TelemetryHealth
from edgeml.fleet.rollouts.publisher import DesiredPublisher
from edgeml.fleet.store import Store
from edgeml.fleet.store.models import DesiredDocument, Lease, Rollout, as_utc
from edgeml.protocol import RolloutState

log = logging.getLogger(__name__)

LEASE = "rollouts"
ACTIVE_STATES = wakeups.ACTIVE_STATES
MAX_WAVES_PER_STEP = 64      # a step follows passes from wave to wave (waves with nothing to observe)
PUBLISH_RETRY_S = 5.0
DOCS = cast(Table, DesiredDocument.__table__)


class LeaseLost(FleetError):
    """Another server process took the rollout lease: this one stops acting."""


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
                 poll_s: float = 1.0, lease_ttl_s: float = 10.0, membership_s: float = 30.0,
                 fanout_chunk: int = 1000, holder: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.publisher = store, publisher
        self.health: HealthSource = health or TelemetryHealth()
        self.poll_s, self.lease_ttl_s, self.membership_s = poll_s, lease_ttl_s, membership_s
        self.fanout_chunk, self.clock = fanout_chunk, clock
        self.holder = holder or uuid.uuid4().hex[:16]
        self.steps = 0                            # rollout steps taken (what an idle server must not do)
        self._stop = threading.Event()
        self._bell = threading.Event()
        self._thread: threading.Thread | None = None
        self._lease_until = 0.0                   # while now < this (minus a margin) we hold the lease
        self._due: dict[str, float] = {}          # active rollout → its next deadline (clock seconds)
        self._awaiting: set[str] = set()          # rollouts whose wave waits for telemetry
        self._next_membership = 0.0
        self._next_lease_look = 0.0
        self._fresh = True                        # the first pass after start looks for active rollouts
        self._publish_at: float | None = None     # retry publishing documents the broker did not take

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def wake(self) -> None:
        self._bell.set()

    # -- thread --------------------------------------------------------------------------------------
    def start(self) -> None:
        wakeups.listen(self.store, self.wake)
        if hasattr(self.publisher, "on_change"):
            self.publisher.on_change = self.wake
        self._thread = threading.Thread(target=self._run, name="edgeml-rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        wakeups.unlisten(self.store, self.wake)
        self._stop.set()
        self._bell.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        try:
            release_lease(self.store, self.holder)  # a successor need not wait for the lease to expire
        except Exception:  # the store may already be closed; the lease then simply expires
            log.debug("could not release the rollout lease", exc_info=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except LeaseLost:
                log.info("another server process took over the rollouts")
            except Exception:  # one bad pass (database hiccup) must not end the loop
                log.exception("rollout controller pass failed; trying again")
                self._lease_until, self._fresh = 0.0, True   # start over with a full pass
            self._bell.wait(self._sleep_s())
            self._bell.clear()

    def _sleep_s(self) -> float:
        now = self.clock()
        wake_at = [now + self.poll_s, *self._due.values()]
        if self._due:
            wake_at.append(self._lease_until - self.lease_ttl_s * 2 / 3)
        if self._publish_at is not None:
            wake_at.append(self._publish_at)
        return max(0.0, min(wake_at) - now)

    # -- one pass ------------------------------------------------------------------------------------
    def run_once(self) -> None:
        """Do what is due; when nothing is, this is one read of the wake-up table."""
        now = self.clock()
        self._record_acks()
        with self.store.reader() as session:   # a read: on SQLite it must not take the write lock every second
            noted = wakeups.peek(session)
        if now >= self._lease_until - self.lease_ttl_s / 3:
            self._without_lease(now, noted)
            return
        due = sorted(rid for rid, t in self._due.items() if t <= now)
        membership = bool(self._due) and now >= self._next_membership
        publish = self._publish_at is not None and now >= self._publish_at
        if noted or due or membership or publish:
            self._act(self._take_notes() if noted else [], due, membership, publish)
        elif self._due and now >= self._lease_until - self.lease_ttl_s * 2 / 3:
            self._take_lease(now)   # keep the lease while a rollout is active; an idle fleet lets it lapse

    def _without_lease(self, now: float, noted: bool) -> None:
        """Not holding the lease: take it when there is something to do — a note, the first pass after
        start, or (every lease lifetime) active rollouts whose holder may have died."""
        if not (noted or self._fresh or now >= self._next_lease_look):
            return
        self._next_lease_look = now + self.lease_ttl_s
        self._fresh = False
        if not noted and not self._any_active():
            return
        if self._take_lease(now):
            self._full_pass()

    def _any_active(self) -> bool:
        with self.store.session() as session:
            return session.scalars(select(Rollout.id).where(Rollout.state.in_(ACTIVE_STATES)).limit(1)).first() \
                is not None

    def _take_lease(self, now: float) -> bool:
        if acquire_lease(self.store, self.holder, self.lease_ttl_s, datetime.fromtimestamp(now, UTC)):
            self._lease_until = now + self.lease_ttl_s
            return True
        self._lease_until, self._due, self._awaiting = 0.0, {}, set()   # another server process acts
        return False

    def _take_notes(self) -> list[str]:
        with self.store.session() as session:
            return wakeups.take(session)

    def _full_pass(self) -> None:
        """After taking the lease: every note is old news; step every active rollout and publish whatever
        the broker has not acknowledged."""
        self._take_notes()
        self.tick_all(joiners=True)
        self.publish_pending()

    def _act(self, notes: Sequence[str], due: Sequence[str], membership: bool, publish: bool) -> None:
        targets = set(due)
        for note in notes:
            rollout_id, kind = wakeups.split_key(note)
            if kind == wakeups.MEMBERSHIP:
                membership = True
            elif kind == wakeups.PUBLISH:
                publish = True
            elif rollout_id and (kind != wakeups.TELEMETRY or rollout_id in self._awaiting
                                 or rollout_id not in self._due):
                targets.add(rollout_id)   # telemetry matters only to a wave that waits for it
        if membership:   # a step only for a rollout that someone joined
            self._next_membership = self.clock() + self.membership_s
            targets.update(rid for rid in sorted(self._due) if self._add_joiners(rid))
        for rollout_id in sorted(targets):
            self.step_rollout(rollout_id)
        if publish:
            self.publish_pending()

    def tick(self) -> bool:
        """Take the lease and step every active rollout now, then publish what is pending; False when
        another server holds the lease. (The loop steps only what is due; tests drive this directly.)"""
        now = self.clock()
        if not self._take_lease(now):
            return False
        self._take_notes()
        self.tick_all(joiners=True)
        self.publish_pending()
        self._record_acks()
        return True

    def tick_all(self, *, joiners: bool) -> None:
        with self.store.session() as session:
            ids = list(session.scalars(select(Rollout.id).where(Rollout.state.in_(ACTIVE_STATES))
                                       .order_by(Rollout.created_at)))
        self._due = {rid: t for rid, t in self._due.items() if rid in ids}
        self._next_membership = self.clock() + self.membership_s
        for rollout_id in ids:
            self.step_rollout(rollout_id, joiners=joiners)

    # -- one rollout ---------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[Session]:
        """A transaction that first renews the lease (a write: on SQLite it takes the write lock before
        any read; on PostgreSQL it fences a controller that lost the lease while it was busy)."""
        with self.store.session() as session:
            now = self.now()
            renewed = session.execute(update(Lease).where(Lease.name == LEASE, Lease.holder == self.holder)
                                      .values(expires_at=now + timedelta(seconds=self.lease_ttl_s)))
            if renewed.rowcount != 1:  # type: ignore[attr-defined]
                self._lease_until = 0.0
                raise LeaseLost("another server process holds the rollout lease now")
            self._lease_until = self.clock() + self.lease_ttl_s
            yield session

    def step_rollout(self, rollout_id: str, *, joiners: bool = False) -> None:
        """Everything due for one rollout: members, sends, progress, the wave's decision, the next deadline."""
        self.steps += 1
        key = fleet_signing_key(self.store)   # once per step: another process may have rotated it
        with self._locked() as session:
            r = session.get(Rollout, rollout_id, with_for_update=True)
            if r is None or r.state not in ACTIVE_STATES:
                self._forget(rollout_id)
                return
            if r.state == RolloutState.RUNNING and not waves.plan(session, r, self.now()) and joiners:
                waves.add_joiners(session, r, self.now())
        for _ in range(MAX_WAVES_PER_STEP):
            self._send_due(rollout_id, key)
            with self._locked() as session:
                r = session.get(Rollout, rollout_id, with_for_update=True)
                if r is None or r.state not in ACTIVE_STATES:
                    break
                before = r.current_wave
                step = waves.Step(key, self.health, self.now())
                if r.state == RolloutState.ABORTING:
                    issued = decisions.finish_abort(session, r, step)
                else:
                    waves.absorb_progress(session, r, step)
                    issued = decisions.judge_wave(session, r, step)
                state, wave = r.state, r.current_wave
            self._publish(issued)
            if state != RolloutState.RUNNING or wave == before:
                break
        self._schedule(rollout_id)

    def _add_joiners(self, rollout_id: str) -> bool:
        with self._locked() as session:
            r = session.get(Rollout, rollout_id, with_for_update=True)
            return r is not None and r.state == RolloutState.RUNNING and bool(waves.add_joiners(session, r, self.now()))

    def _send_due(self, rollout_id: str, key: SigningKey) -> None:
        """Fan out in chunks: each chunk is signed and committed in its own short transaction (the ingest
        never waits long for the database) and handed to the broker while the next one is signed."""
        while True:
            with self._locked() as session:
                r = session.get(Rollout, rollout_id, with_for_update=True)
                if r is None or r.state != RolloutState.RUNNING:
                    return
                decisions.start_wave(session, r, self.now())
                issued = waves.send_due(session, r, waves.Step(key, self.health, self.now()), self.fanout_chunk)
            if not issued:
                return
            self._publish(issued)
            self._record_acks()

    def _schedule(self, rollout_id: str) -> None:
        """The rollout's next deadline, from its row (so a successor computes the same)."""
        with self.store.session() as session:
            r = session.get(Rollout, rollout_id)
        if r is None or r.state not in ACTIVE_STATES:
            self._forget(rollout_id)
            return
        now = self.clock()
        self._awaiting.discard(rollout_id)
        wave_started, observe_started = as_utc(r.wave_started_at), as_utc(r.observe_started_at)
        if r.state == RolloutState.ABORTING or wave_started is None:
            due = now
        elif observe_started is None:
            due = wave_started.timestamp() + r.wave_timeout_s
        elif now < observe_started.timestamp() + r.observe_s:
            due = observe_started.timestamp() + r.observe_s
        else:
            self._awaiting.add(rollout_id)
            due = observe_started.timestamp() + r.wave_timeout_s
        self._due[rollout_id] = due

    def _forget(self, rollout_id: str) -> None:
        self._due.pop(rollout_id, None)
        self._awaiting.discard(rollout_id)

    # -- publishing ----------------------------------------------------------------------------------
    def _publish(self, issued: Sequence[Issued]) -> None:
        refused = sum(not self.publisher.publish(i.device_id, i.serial, i.wire) for i in issued)
        if refused:
            log.info("%d desired states wait for the broker; publishing them again in %g s", refused,
                     PUBLISH_RETRY_S)
            self._publish_at = self.clock() + PUBLISH_RETRY_S

    def publish_pending(self) -> None:
        """Publish every document the broker has not acknowledged (all of them after a reconnect: a
        restarted broker forgets retained messages), in chunks by device id."""
        self._publish_at = None
        resync = self.publisher.take_resync()
        after = ""
        while True:
            with self.store.session() as session:
                query = select(DOCS.c.device_id, DOCS.c.serial, DOCS.c.wire).where(DOCS.c.device_id > after)
                if not resync:
                    query = query.where(DOCS.c.published_at.is_(None))
                rows = session.execute(query.order_by(DOCS.c.device_id).limit(self.fanout_chunk)).all()
            if not rows:
                return
            self._publish([Issued(d, s, w.encode()) for d, s, w in rows])
            self._record_acks()
            after = rows[-1][0]

    def _record_acks(self) -> None:
        """Mark the documents the broker acknowledged (the same serial: a newer document stays unmarked)."""
        acked = self.publisher.take_acked()
        if not acked:
            return
        stmt = update(DOCS).where(DOCS.c.device_id == bindparam("b_device"), DOCS.c.serial == bindparam("b_serial")) \
            .values(published_at=bindparam("b_at"))
        at = self.now()
        with self.store.session() as session:
            session.execute(stmt, [{"b_device": d, "b_serial": s, "b_at": at} for d, s in acked])
