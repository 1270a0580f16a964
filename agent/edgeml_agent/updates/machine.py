"""The update state machine, exactly as DESIGN.md draws it::

    idle → downloading → verifying → staging → smoke_testing → switching → probation → committed → idle
                 (any step before switching) ──fail──▶ failed → idle
                 switching/probation ──fail/unhealthy──▶ rolling_back → failed → idle

:data:`TRANSITIONS` is the whole graph, boot-loop exits included; a (state, event) pair that is not in
it raises :class:`TransitionError` (a state that returns an event the table does not know is a bug,
not something to retry silently). The record is saved (atomically) with the next state *before* that
state's side effect runs. A restarted agent re-enters the state it saved (every side effect is
idempotent, see :mod:`.states`), so there is no separate resume map; what a restart does decide is
whether the agent is boot-looping: :func:`recover_before_load` counts restarts per state and, past
:data:`MAX_RESTARTS`, leaves the state through its ``boot_loop`` transition.

Until ``switching`` the running model is never touched, so a failure there needs no rollback; after
it, failure means rolling back to the previous version, which is still installed.
"""

from __future__ import annotations

import logging

from edgeml.desired import DesiredModel, DesiredState
from edgeml.errors import EdgeMLError, UpdateError
from edgeml.protocol import UpdateEvent, UpdateState
from edgeml_agent.store import Store
from edgeml_agent.updates.context import UpdateContext
from edgeml_agent.updates.record import RecordFile, UpdateRecord, now
from edgeml_agent.updates.states import STATES

log = logging.getLogger("edgeml_agent.updates")

S, E = UpdateState, UpdateEvent

TRANSITIONS: dict[tuple[UpdateState, UpdateEvent], UpdateState] = {
    (S.IDLE, E.UPDATE): S.DOWNLOADING,
    (S.DOWNLOADING, E.DOWNLOADED): S.VERIFYING,
    (S.DOWNLOADING, E.FAIL): S.FAILED,
    (S.DOWNLOADING, E.BOOT_LOOP): S.FAILED,
    (S.VERIFYING, E.VERIFIED): S.STAGING,
    (S.VERIFYING, E.FAIL): S.FAILED,
    (S.VERIFYING, E.BOOT_LOOP): S.FAILED,
    (S.STAGING, E.STAGED): S.SMOKE_TESTING,
    (S.STAGING, E.FAIL): S.FAILED,
    (S.STAGING, E.BOOT_LOOP): S.FAILED,
    (S.SMOKE_TESTING, E.SMOKE_OK): S.SWITCHING,
    (S.SMOKE_TESTING, E.FAIL): S.FAILED,
    (S.SMOKE_TESTING, E.BOOT_LOOP): S.FAILED,       # the new model crashes the agent as it loads
    (S.SWITCHING, E.SWITCHED): S.PROBATION,
    (S.SWITCHING, E.FAIL): S.ROLLING_BACK,
    (S.SWITCHING, E.BOOT_LOOP): S.ROLLING_BACK,     # `current` may already name the new version
    (S.PROBATION, E.HEALTHY): S.COMMITTED,
    (S.PROBATION, E.UNHEALTHY): S.ROLLING_BACK,
    (S.PROBATION, E.FAIL): S.ROLLING_BACK,
    (S.PROBATION, E.BOOT_LOOP): S.ROLLING_BACK,     # the new model serves, and keeps killing the agent
    # Committed: the new version is recorded before pruning; a failed clean-up (or a crash loop in
    # it) never rolls a committed update back.
    (S.COMMITTED, E.DONE): S.IDLE,
    (S.COMMITTED, E.FAIL): S.IDLE,
    (S.COMMITTED, E.BOOT_LOOP): S.IDLE,
    (S.ROLLING_BACK, E.ROLLED_BACK): S.FAILED,
    # A failure inside rolling_back (the previous version failed to load, a disk error) retries the
    # rollback (after a pause that grows, see states.retry_pause): it is the only safe direction, and
    # every step of it is idempotent. If it keeps crashing the agent, the boot-loop guard ends it in
    # failed with `current` on the previous version.
    (S.ROLLING_BACK, E.FAIL): S.ROLLING_BACK,
    (S.ROLLING_BACK, E.BOOT_LOOP): S.FAILED,
    # Failed: the refusal is recorded first; a failed clean-up of the download still ends the update.
    (S.FAILED, E.DONE): S.IDLE,
    (S.FAILED, E.FAIL): S.IDLE,
    (S.FAILED, E.BOOT_LOOP): S.IDLE,
}

# Restarts tolerated inside one state before the update leaves it through `boot_loop`: a new model
# that crashes the agent must not boot-loop the device.
MAX_RESTARTS: dict[UpdateState, int] = {S.SWITCHING: 2, S.PROBATION: 2, S.SMOKE_TESTING: 2}
DEFAULT_MAX_RESTARTS = 5


class TransitionError(UpdateError):
    """A (state, event) pair that is not in :data:`TRANSITIONS`: a bug in a state, never retried."""


def next_state(state: UpdateState, event: UpdateEvent) -> UpdateState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError(f"no transition from {state} on {event}") from None


def describe() -> str:
    """The table, one transition a line (``python -m edgeml_agent.updates.machine`` prints it)."""
    return "\n".join(f"{s:>14} --{e}--> {t}" for (s, e), t in TRANSITIONS.items())


class UpdateMachine:
    """Runs one update at a time from the persisted record; ``step`` is one transition."""

    def __init__(self, ctx: UpdateContext) -> None:
        self.ctx = ctx

    def begin(self, desired: DesiredState, model: DesiredModel) -> None:
        """Start applying ``model`` from ``desired`` (call only in ``idle``)."""
        rec = self.ctx.records.load()
        current = self.ctx.services.store.current(model.name)
        rec.desired = desired.raw.decode()
        rec.model, rec.target_version, rec.bundle_sha256 = model.name, model.version, model.sha256
        rec.previous_version = current
        rec.reason, rec.probation_started = None, None
        rec.last_serial = max(rec.last_serial, desired.serial)
        if current:
            rec.baseline = self.ctx.health.health(model.name, current).to_json()
        self._transition(rec, E.UPDATE)

    def run_until_idle(self) -> UpdateRecord:
        rec = self.ctx.records.load()
        while rec.state != S.IDLE:
            rec = self.step(rec)
        return rec

    def step(self, rec: UpdateRecord) -> UpdateRecord:
        state = STATES[rec.state]
        self.ctx.checkpoint(rec.state, "enter")
        try:
            event = state.on_enter(self.ctx, rec)
        except EdgeMLError as exc:
            rec.reason = str(exc)
            log.error("update %s@%s failed in %s: %s", rec.model, rec.target_version, rec.state, exc)
            event = E.FAIL
        except Exception as exc:  # a bug or a runtime crash must still end in a safe state
            rec.reason = f"{type(exc).__name__}: {exc}"
            log.exception("update failed in %s", rec.state)
            event = E.FAIL
        return self._transition(rec, event)

    def _transition(self, rec: UpdateRecord, event: UpdateEvent) -> UpdateRecord:
        source = rec.state
        target = next_state(source, event)
        _move(rec, event, target)
        self.ctx.records.save(rec)   # persisted before the next state's side effect
        self.ctx.report("update", state=target, transition=event, source=source, model=rec.model,
                        version=rec.target_version, previous=rec.previous_version, reason=rec.reason)
        return rec


def _move(rec: UpdateRecord, event: UpdateEvent, target: UpdateState) -> None:
    rec.history.append([round(now(), 3), rec.state, event, target])
    rec.state, rec.entered_at, rec.restarts = target, now(), 0
    if target == S.IDLE:
        rec.desired, rec.bundle_sha256, rec.probation_started = None, None, None


def recover_before_load(records: RecordFile, store: Store) -> UpdateRecord:
    """Called before the agent loads its models: count this restart against the state it interrupted
    and, if the agent keeps dying there, leave the state through its ``boot_loop`` transition — pointing
    ``current`` back at the previous version first when that transition rolls back."""
    rec = records.load()
    if rec.state == S.IDLE:
        return rec
    rec.restarts += 1
    limit = MAX_RESTARTS.get(rec.state, DEFAULT_MAX_RESTARTS)
    if rec.restarts > limit:
        target = next_state(rec.state, E.BOOT_LOOP)
        rec.reason = f"the agent restarted {rec.restarts - 1} times in {rec.state}" + \
            (": rolling back" if target == S.ROLLING_BACK else "")
        if rec.model and rec.previous_version and S.ROLLING_BACK in (rec.state, target):
            store.set_current(rec.model, rec.previous_version)   # before the models are loaded again
        _move(rec, E.BOOT_LOOP, target)
    records.save(rec)
    return rec


if __name__ == "__main__":
    print(describe())
