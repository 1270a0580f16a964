"""Writing device telemetry into the store exactly once, and the queries the fleet asks of it.

``store_messages`` takes a batch of decoded envelopes (see :mod:`edgeml.telemetry.messages`) and, in
one transaction, inserts the ones whose (device, sequence number) is new — duplicates from
redeliveries or from another server process are dropped by the primary key — then derives events,
per-window model figures, hourly roll-ups and drift scores from the new ones only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, bindparam, case, delete, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from edgeml.fleet.bulk_sql import insert_rows
from edgeml.fleet.rollouts.wakeups import note_ingested
from edgeml.fleet.store import Store
from edgeml.fleet.store.models import Device
from edgeml.fleet.store.rollup_models import DeviceVersion, VersionMinute
from edgeml.fleet.store.telemetry_models import DeviceEvent, DeviceMessage, DriftScore, ModelWindow
from edgeml.fleet.telemetry_rollups import (
    ReferenceCache,
    parse_windows,
    table_of,
    update_rollups,
)
from edgeml.protocol import UPDATE_EVENT, UpdateState
from edgeml.telemetry.latency import merge, percentile


@dataclass(frozen=True)
class Envelope:
    device_id: str
    seq: int
    ts: datetime
    kind: str
    body: dict[str, Any]

    @classmethod
    def parse(cls, device_id: str, doc: dict[str, Any]) -> Envelope:
        """Raise ValueError for anything that is not a schema-1 envelope from that device."""
        if doc.get("schema") != 1 or doc.get("device") != device_id:
            raise ValueError("not a schema-1 envelope from this device")
        seq = doc["seq"]
        if not isinstance(seq, int) or seq < 1:
            raise ValueError("bad sequence number")
        body = doc.get("body")
        if not isinstance(body, dict):
            raise ValueError("body must be an object")
        return cls(device_id, seq, datetime.fromtimestamp(float(doc["ts"]), UTC), str(doc["kind"]), body)


def store_messages(session: Session, batch: Sequence[Envelope], *, writer: str = "default",
                   references: ReferenceCache | None = None) -> int:
    """Insert the new messages of ``batch`` and everything derived from them; returns how many were new.

    ``writer`` names the ingest process (its rows of the per-minute roll-up are its own); ``references``
    keeps bundles' reference statistics between batches (a fresh cache per call when not given).
    """
    if not batch:
        return 0
    unique = {(e.device_id, e.seq): e for e in batch}   # a batch may itself hold a redelivery
    now = datetime.now(UTC)
    # One INSERT ... ON CONFLICT DO NOTHING RETURNING for the whole batch: the keys it returns are the
    # new messages. No look-up first, one round trip, and a concurrent server storing the same message
    # is not an error: its copy wins.
    inserted = {(str(d), int(q)) for d, q in insert_rows(session, table_of(DeviceMessage), [
        {"device_id": e.device_id, "seq": e.seq, "kind": e.kind, "ts": e.ts, "received_at": now, "body": e.body}
        for _, e in sorted(unique.items())], skip_conflicts=True, returning=("device_id", "seq"))}
    fresh = [e for key, e in sorted(unique.items()) if key in inserted]
    if not fresh:
        return 0
    events = [e for e in fresh if e.kind == "event"]
    if events:
        insert_rows(session, table_of(DeviceEvent), [
            {"device_id": e.device_id, "seq": e.seq, "ts": e.ts, "kind": str(e.body.get("event", "event"))[:64],
             "body": e.body} for e in events])
        _track_installed(session, events)
    windows = [w for e in fresh if e.kind == "telemetry" for w in parse_windows(e.device_id, e.seq, e.ts, e.body)]
    update_rollups(session, windows, writer=writer, references=references or ReferenceCache())
    _touch_devices(session, fresh)
    note_ingested(session, fresh)   # wakes the rollout controller when a rollout waits on these (rollouts.wakeups)
    return len(fresh)


def _installed_version(body: dict[str, Any]) -> tuple[str, str] | None:
    """(model, version) an agent's event says is installed now, if it says so."""
    model, version = body.get("model"), None
    if body.get("event") == UPDATE_EVENT and body.get("state") in (UpdateState.COMMITTED, UpdateState.FAILED) and model:
        version = body.get("version") if body.get("state") == UpdateState.COMMITTED else body.get("previous")
    elif body.get("event") == "model_loaded" and model:
        version = body.get("version")
    return (str(model), str(version)) if version else None


def _track_installed(session: Session, events: Sequence[Envelope]) -> None:
    """Keep ``Device.installed["bundles"]`` (the shape enrolment reports) current from the agent's events."""
    changes = [(e.device_id, change) for e in events if (change := _installed_version(e.body)) is not None]
    if not changes:
        return
    devices = {d.id: d for d in session.scalars(
        select(Device).where(Device.id.in_(sorted({d for d, _ in changes}))).order_by(Device.id).with_for_update())}
    for device_id, (model, version) in changes:   # in sequence order: the last word wins
        device = devices.get(device_id)
        if device is not None:
            installed = dict(device.installed or {})
            installed["bundles"] = {**(installed.get("bundles") or {}), model: version}
            device.installed = installed


def _touch_devices(session: Session, fresh: Sequence[Envelope]) -> None:
    """``last_seen`` moves forward only: one executemany UPDATE, in id order (no lock-order deadlocks)."""
    seen: dict[str, datetime] = {}
    for e in fresh:
        if e.device_id not in seen or seen[e.device_id] < e.ts:
            seen[e.device_id] = e.ts
    devices = table_of(Device)
    stmt = (update(devices).where(devices.c.id == bindparam("b_id"))
            .where(or_(devices.c.last_seen.is_(None), devices.c.last_seen < bindparam("b_ts")))
            .values(last_seen=bindparam("b_ts")))
    session.execute(stmt, [{"b_id": d, "b_ts": ts} for d, ts in sorted(seen.items())])


def record_status(session: Session, device_id: str, state: str) -> None:
    """The retained status (last-will 'offline') of a device."""
    record_statuses(session, [(device_id, state)])


def record_statuses(session: Session, statuses: Sequence[tuple[str, str]]) -> None:
    """The retained statuses of a batch, the last one per device winning, as one executemany UPDATE."""
    if not statuses:
        return
    now = datetime.now(UTC)
    latest = dict(statuses)
    devices = table_of(Device)
    rows = [{"b_id": d, "b_state": state[:16], "b_online": state == "online"} for d, state in sorted(latest.items())]
    stmt = (update(devices).where(devices.c.id == bindparam("b_id"))
            .values(mqtt_status=bindparam("b_state"), status_at=now,
                    last_seen=case((bindparam("b_online", type_=Boolean), now), else_=devices.c.last_seen)))
    session.execute(stmt, rows)


# Raw rows deleted per statement: each DELETE is short, so ingest and the API never wait long on it.
PRUNE_BATCH = 5000
ROLLUP_RETENTION = timedelta(days=35)   # per-minute roll-ups: /v1/health looks back at most 31 days


def prune(session: Session, raw_retention: timedelta, *, batch: int = PRUNE_BATCH) -> int:
    """Delete raw messages, events and windows older than the retention (hourly roll-ups stay), in
    statements of at most ``batch`` rows. Use :func:`prune_in_batches` to commit after each one."""
    removed = 0
    while True:
        n = prune_step(session, raw_retention, batch=batch)
        removed += n
        if n == 0:
            return removed


def prune_step(session: Session, raw_retention: timedelta, *, batch: int = PRUNE_BATCH) -> int:
    """One bounded round of deletes (at most ``batch`` rows per table); 0 when nothing is left."""
    now = datetime.now(UTC)
    cutoff = now - raw_retention
    removed = 0
    for model, column in ((DeviceMessage, DeviceMessage.received_at), (DeviceEvent, DeviceEvent.ts),
                          (ModelWindow, ModelWindow.ts), (VersionMinute, VersionMinute.minute)):
        table = table_of(model)
        pk = tuple_(*table.primary_key.columns)
        old = select(*table.primary_key.columns).where(
            column < (now - ROLLUP_RETENTION if model is VersionMinute else cutoff)).limit(batch)
        result: Any = session.execute(delete(table).where(pk.in_(old)))
        removed += int(result.rowcount or 0)
    return removed


def prune_in_batches(store: Store, raw_retention: timedelta, *, batch: int = PRUNE_BATCH) -> int:
    """:func:`prune` with a commit after every round, so no transaction holds the tables for long."""
    removed = 0
    while True:
        with store.session() as session:
            n = prune_step(session, raw_retention, batch=batch)
        removed += n
        if n == 0:
            return removed


# -- queries -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VersionHealth:
    model: str
    version: str
    devices: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float | None
    p95_ms: float | None
    drift: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "devices": self.devices, "requests": self.requests,
                "errors": self.errors, "error_rate": round(self.error_rate, 5),
                "requests_per_s": round(self.requests_per_s, 3), "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
                "drift": self.drift}


def version_health(session: Session, *, model: str, version: str, device_ids: Iterable[str] | None,
                   since: datetime) -> VersionHealth:
    """Fleet figures for one model version from the windows received since ``since``."""
    query = select(ModelWindow).where(ModelWindow.model == model, ModelWindow.version == version,
                                      ModelWindow.ts >= since)
    ids = list(device_ids) if device_ids is not None else None
    if ids is not None:
        query = query.where(ModelWindow.device_id.in_(ids))
    rows = session.execute(query).scalars().all()
    latency = merge(r.latency for r in rows)
    devices = {r.device_id for r in rows}
    per_device_seconds: dict[str, float] = {}
    for r in rows:
        per_device_seconds[r.device_id] = per_device_seconds.get(r.device_id, 0.0) + r.window_s
    seconds = max(per_device_seconds.values(), default=0.0)
    # Fleet-wide, the drift of the devices counted above: one that ran this version last month (and has
    # moved on) keeps its score row but says nothing about the version's health now. A gate names its
    # wave's devices itself. A subquery, not the ids: a big fleet's list would overflow the bind limit.
    counted = ids if ids is not None else select(ModelWindow.device_id).where(
        ModelWindow.model == model, ModelWindow.version == version, ModelWindow.ts >= since)
    drift_query = select(DriftScore.score).where(DriftScore.model == model, DriftScore.version == version,
                                                 DriftScore.device_id.in_(counted))
    drifts = [s for s in session.execute(drift_query).scalars() if s is not None]
    return VersionHealth(model, version, len(devices), sum(r.requests for r in rows), sum(r.errors for r in rows),
                         seconds, percentile(latency, 50), percentile(latency, 95),
                         max(drifts) if drifts else None)


def fleet_health(session: Session, since: datetime) -> list[VersionHealth]:
    """Per model version, the figures since ``since``, from the roll-ups (never from raw windows).

    Devices and drift come from ``device_versions`` (a device counts when its last window of that
    version is at or after ``since``; its drift is its current score); requests, errors and latency from
    ``version_minutes``, to the minute (the minute holding ``since`` counts whole). The request rate is
    over all that time: agents send no window for a model that served nothing, so a burst of 100
    requests nine minutes ago is 0.17 req/s over ten minutes, not 200.
    """
    dv, vm = DeviceVersion, VersionMinute
    devices = {(str(m), str(v)): (int(n), d) for m, v, n, d in session.execute(
        select(dv.model, dv.version, func.count(), func.max(dv.drift)).where(dv.last_ts >= since)
        .group_by(dv.model, dv.version))}
    totals: dict[tuple[str, str], tuple[int, int, list[list[int]]]] = {}
    for m, v, requests, errors, latency in session.execute(
            select(vm.model, vm.version, vm.requests, vm.errors, vm.latency)
            .where(vm.minute >= since.replace(second=0, microsecond=0))):
        r, e, hs = totals.get((m, v), (0, 0, []))
        totals[(m, v)] = (r + int(requests), e + int(errors), [*hs, latency])
    seconds = (datetime.now(UTC) - since).total_seconds()
    out = []
    for m, v in sorted(devices):
        n, drift = devices[(m, v)]
        requests, errors, histograms = totals.get((m, v), (0, 0, []))
        latency = merge(histograms)
        out.append(VersionHealth(m, v, n, requests, errors, seconds, percentile(latency, 50),
                                 percentile(latency, 95), drift))
    return out


def update_events(session: Session, *, device_ids: list[str], since: datetime) -> list[DeviceEvent]:
    """The agents' update progress events (kind 'update'), oldest first."""
    return list(session.execute(
        select(DeviceEvent).where(DeviceEvent.kind == "update", DeviceEvent.device_id.in_(device_ids),
                                  DeviceEvent.ts >= since).order_by(DeviceEvent.ts, DeviceEvent.seq)
    ).scalars())


def device_telemetry(session: Session, device_id: str, since: datetime, limit: int = 200) -> dict[str, Any]:
    windows = session.execute(select(ModelWindow).where(ModelWindow.device_id == device_id, ModelWindow.ts >= since)
                              .order_by(ModelWindow.ts.desc()).limit(limit)).scalars().all()
    events = session.execute(select(DeviceEvent).where(DeviceEvent.device_id == device_id, DeviceEvent.ts >= since)
                             .order_by(DeviceEvent.ts.desc()).limit(limit)).scalars().all()
    drift = session.execute(select(DriftScore).where(DriftScore.device_id == device_id)).scalars().all()
    mine = (DeviceMessage.device_id == device_id, DeviceMessage.kind == "telemetry")
    last = session.execute(select(DeviceMessage).where(*mine)
                           .order_by(DeviceMessage.seq.desc()).limit(1)).scalars().first()
    return {
        "device": device_id,
        "windows": [{"ts": w.ts.isoformat(), "model": w.model, "version": w.version, "requests": w.requests,
                     "errors": w.errors, "p50_ms": percentile(w.latency, 50), "p95_ms": percentile(w.latency, 95),
                     "runtime": w.runtime, "device": w.accelerator, "fallback": w.fallback} for w in windows],
        "events": [{"ts": e.ts.isoformat(), "seq": e.seq, "kind": e.kind, "body": e.body} for e in events],
        "drift": [{"model": d.model, "version": d.version, "score": d.score, "tensors": d.tensors} for d in drift],
        "system": (last.body.get("system") if last else None) or {},
    }


def max_sequence(session: Session, device_id: str) -> int:
    from sqlalchemy import func

    query = select(func.max(DeviceMessage.seq)).where(DeviceMessage.device_id == device_id)
    return int(session.execute(query).scalar() or 0)
