"""Wake-ups for the rollout controller: cheap notes that something a rollout waits on has happened.

The controller sleeps until its next deadline (a wave's timeout, the end of an observation window).
Whatever can move a rollout earlier leaves a row in ``rollout_wakeups`` (an insert that does nothing
when the row is there, so a burst of events is one row):

* ``<rollout id>:control`` — the API created, paused, resumed or aborted it;
* ``<rollout id>:update`` — the ingest stored an update event (or ``model_loaded``) of its model;
* ``<rollout id>:telemetry`` — the ingest stored telemetry of its version after the observation window
  ended, i.e. while the wave waits for data (during the window nothing is judged, so nothing is noted);
* ``membership`` — a device enrolled or was revoked (it may join a selector);
* ``publish`` — desired states were re-issued outside the controller (a key rotation) and wait for the broker.

The controller reads the table every ``poll_s`` — one primary-key scan of a table that is empty while
nothing happens — and deletes the rows it acts on. In the same process :func:`ring` wakes it at once.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from edgeml.fleet.bulk_sql import dialect_insert
from edgeml.fleet.store.models import Rollout, RolloutWakeup, as_utc, utcnow
from edgeml.protocol import UPDATE_EVENT, RolloutState

CONTROL, UPDATE, TELEMETRY = "control", "update", "telemetry"
MEMBERSHIP, PUBLISH = "membership", "publish"
ACTIVE_STATES = (RolloutState.RUNNING, RolloutState.ABORTING)
# agent events that say where a device stands with a model (the ingest also records the installed version)
WAKING_EVENTS = (UPDATE_EVENT, "model_loaded")

_bells: weakref.WeakKeyDictionary[Any, list[Callable[[], None]]] = weakref.WeakKeyDictionary()
_bells_lock = threading.Lock()


def rollout_key(rollout_id: str, kind: str) -> str:
    return f"{rollout_id}:{kind}"


def split_key(key: str) -> tuple[str | None, str]:
    """``"ro-1:update"`` → ``("ro-1", "update")``; ``"membership"`` → ``(None, "membership")``."""
    rollout_id, sep, kind = key.rpartition(":")
    return (rollout_id, kind) if sep else (None, key)


def note(session: Session, keys: Iterable[str], now: datetime | None = None) -> None:
    """Leave wake-up notes (in the caller's transaction: they count only if it commits)."""
    unique = sorted(set(keys))
    if not unique:
        return
    at = now or utcnow()
    table = RolloutWakeup.__table__
    stmt = dialect_insert(session)(table).on_conflict_do_nothing(index_elements=[table.c.key])
    session.execute(stmt, [{"key": k, "at": at} for k in unique])


def peek(session: Session) -> bool:
    return session.scalars(select(RolloutWakeup.key).limit(1)).first() is not None


def take(session: Session) -> list[str]:
    """Remove and return every note. A note left while the controller acts on these is a new row."""
    result = session.execute(delete(RolloutWakeup).returning(RolloutWakeup.key))
    return sorted(str(k) for k in result.scalars())


def note_ingested(session: Session, envelopes: Sequence[Any]) -> None:
    """The ingest's hook (called with the batch's new messages, in its transaction): note update events
    of a live rollout's model and telemetry of its version while its wave waits for data. One read of
    the (small) rollouts table per batch that carries events or model windows."""
    models: set[str] = set()
    versions: set[tuple[str, str]] = set()
    for e in envelopes:
        if e.kind == "event" and e.body.get("event") in WAKING_EVENTS and e.body.get("model"):
            models.add(str(e.body["model"]))
        elif e.kind == "telemetry":
            versions.update((str(m.get("model")), str(m.get("version")))
                            for m in e.body.get("models") or [] if isinstance(m, dict))
    if not models and not versions:
        return
    now = utcnow()
    keys = []
    live = select(Rollout.id, Rollout.name, Rollout.version, Rollout.observe_started_at, Rollout.observe_s) \
        .where(Rollout.state.in_(ACTIVE_STATES))
    for rollout_id, name, version, observe_started_at, observe_s in session.execute(live):
        if name in models:
            keys.append(rollout_key(rollout_id, UPDATE))
        started = as_utc(observe_started_at)
        if (name, version) in versions and started is not None and started + timedelta(seconds=observe_s) <= now:
            keys.append(rollout_key(rollout_id, TELEMETRY))
    note(session, keys, now)


# -- the doorbell (same process) --------------------------------------------------------------------

def listen(store: Any, callback: Callable[[], None]) -> None:
    with _bells_lock:
        _bells.setdefault(store, []).append(callback)


def unlisten(store: Any, callback: Callable[[], None]) -> None:
    with _bells_lock:
        callbacks = _bells.get(store, [])
        if callback in callbacks:
            callbacks.remove(callback)


def ring(store: Any) -> None:
    """Wake this process's controller on ``store`` now (call after the commit that left a note)."""
    with _bells_lock:
        callbacks = list(_bells.get(store, []))
    for callback in callbacks:   # outside the lock: a callback never runs under it
        callback()


def note_and_ring(store: Any, key: str) -> None:
    """Leave one note in its own transaction and wake this process's controller."""
    with store.session() as session:
        note(session, [key])
    ring(store)

