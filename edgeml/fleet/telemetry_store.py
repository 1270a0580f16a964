"""Writing device telemetry into the store exactly once, and the queries the fleet asks of it.

``store_messages`` takes a batch of decoded envelopes (see :mod:`edgeml.telemetry.messages`) and, in
one transaction, inserts the ones whose (device, sequence number) is new — duplicates from
redeliveries or from another server process are dropped by the primary key — then derives events,
per-window model figures, hourly roll-ups and drift scores from the new ones only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from edgeml.errors import FleetError
from edgeml.fleet.rollouts.wakeups import note_ingested
from edgeml.fleet.store.models import Bundle, Device
from edgeml.fleet.store.telemetry_models import (
    DeviceEvent,
    DeviceMessage,
    DriftScore,
    ModelHourly,
    ModelWindow,
)
from edgeml.protocol import UPDATE_EVENT, UpdateState
from edgeml.telemetry.drift import drift_report, merge_summaries
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


def store_messages(session: Session, batch: Sequence[Envelope]) -> int:
    """Insert the new messages of ``batch`` and everything derived from them; returns how many were new."""
    if not batch:
        return 0
    unique = {(e.device_id, e.seq): e for e in batch}   # a batch may itself hold a redelivery
    now = datetime.now(UTC)
    # One INSERT ... ON CONFLICT DO NOTHING RETURNING for the whole batch (SQLAlchemy sends it as
    # multi-row VALUES statements): the keys it returns are the new messages. No look-up first, one
    # round trip, and a concurrent server storing the same message is not an error: its copy wins.
    table = DeviceMessage.__table__
    stmt = _dialect_insert(session)(table).on_conflict_do_nothing(
        index_elements=[table.c.device_id, table.c.seq]).returning(table.c.device_id, table.c.seq)
    inserted = {(str(d), int(q)) for d, q in session.execute(stmt, [
        {"device_id": e.device_id, "seq": e.seq, "kind": e.kind, "ts": e.ts, "received_at": now, "body": e.body}
        for e in unique.values()])}
    fresh = [e for key, e in sorted(unique.items()) if key in inserted]
    if not fresh:
        return 0
    events = [e for e in fresh if e.kind == "event"]
    if events:
        session.execute(insert(DeviceEvent), [
            {"device_id": e.device_id, "seq": e.seq, "ts": e.ts, "kind": str(e.body.get("event", "event"))[:64],
             "body": e.body} for e in events])
    references: dict[tuple[str, str], dict[str, Any]] = {}
    for e in fresh:
        if e.kind == "event":
            _track_installed(session, e)
        elif e.kind == "telemetry":
            _store_telemetry(session, e, references)
    _touch_devices(session, {e.device_id: e.ts for e in fresh})
    note_ingested(session, fresh)   # wakes the rollout controller when a rollout waits on these (rollouts.wakeups)
    return len(fresh)


def _dialect_insert(session: Session) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    raise FleetError(f"the fleet store supports SQLite and PostgreSQL, not {name}")


def _store_telemetry(session: Session, e: Envelope, references: dict[tuple[str, str], dict[str, Any]]) -> None:
    for m in e.body.get("models") or []:
        try:
            model, version = str(m["model"]), str(m["version"])
            latency = [int(c) for c in m["latency_ms"]["buckets"]]
            requests, errors = int(m["requests"]), sum(int(v) for v in (m.get("errors") or {}).values())
        except (KeyError, TypeError, ValueError):
            continue  # a malformed model entry is skipped; the raw message is kept for inspection
        stats = m.get("stats") or {}
        session.add(ModelWindow(device_id=e.device_id, seq=e.seq, model=model, version=version, ts=e.ts,
                                window_s=float(e.body.get("window_s") or 0.0), requests=requests, errors=errors,
                                latency=latency, stats=stats, runtime=m.get("runtime"), accelerator=m.get("device"),
                                fallback=m.get("fallback")))
        drift = _update_drift(session, e, model, version, stats, references)
        hour = e.ts.replace(minute=0, second=0, microsecond=0)
        row = session.get(ModelHourly, (e.device_id, model, version, hour))
        if row is None:
            session.add(ModelHourly(device_id=e.device_id, model=model, version=version, hour=hour, requests=requests,
                                    errors=errors, latency=latency, drift=drift))
        else:
            row.requests += requests
            row.errors += errors
            row.latency = merge([row.latency, latency])
            row.drift = drift if drift is not None else row.drift


def _reference_stats(session: Session, model: str, version: str,
                     cache: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    key = (model, version)
    if key not in cache:
        query = select(Bundle).where(Bundle.name == model, Bundle.version == version)
        bundle = session.execute(query).scalars().first()
        cache[key] = dict((bundle.manifest or {}).get("reference_stats") or {}) if bundle else {}
    return cache[key]


def _update_drift(session: Session, e: Envelope, model: str, version: str, stats: dict[str, Any],
                  references: dict[tuple[str, str], dict[str, Any]]) -> float | None:
    reference = _reference_stats(session, model, version, references)
    if not reference or not int(stats.get("samples") or 0):
        return None
    row = session.get(DriftScore, (e.device_id, model, version))
    summaries: dict[str, Any] = dict(row.summaries) if row else {"inputs": {}, "outputs": {}}
    for side in ("inputs", "outputs"):
        merged = dict(summaries.get(side) or {})
        for name, s in (stats.get(side) or {}).items():
            merged[name] = merge_summaries([merged[name], s]) if name in merged else merge_summaries([s])
        summaries[side] = merged
    report = drift_report(reference, summaries)
    if row is None:
        session.add(DriftScore(device_id=e.device_id, model=model, version=version, score=report["score"],
                               tensors=report["tensors"], summaries=summaries, updated_at=e.ts))
    else:
        row.score, row.tensors, row.summaries, row.updated_at = report["score"], report["tensors"], summaries, e.ts
    return report["score"]


def _track_installed(session: Session, e: Envelope) -> None:
    """Keep ``Device.installed["bundles"]`` (the shape enrolment reports) current from the agent's events."""
    body = e.body
    model, version = body.get("model"), None
    if body.get("event") == UPDATE_EVENT and body.get("state") in (UpdateState.COMMITTED, UpdateState.FAILED) and model:
        version = body.get("version") if body.get("state") == UpdateState.COMMITTED else body.get("previous")
    elif body.get("event") == "model_loaded" and model:
        version = body.get("version")
    if not version:
        return
    device = session.get(Device, e.device_id)
    if device is not None:
        installed = dict(device.installed or {})
        installed["bundles"] = {**(installed.get("bundles") or {}), str(model): str(version)}
        device.installed = installed


def _touch_devices(session: Session, seen: dict[str, datetime]) -> None:
    for device_id, ts in seen.items():
        device = session.get(Device, device_id)
        if device is not None and (device.last_seen is None or _aware(device.last_seen) < ts):
            device.last_seen = ts


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def record_status(session: Session, device_id: str, state: str) -> None:
    """The retained status (last-will 'offline') of a device."""
    device = session.get(Device, device_id)
    if device is not None:
        device.mqtt_status = state[:16]
        device.status_at = datetime.now(UTC)
        if state == "online":
            device.last_seen = datetime.now(UTC)


def prune(session: Session, raw_retention: timedelta) -> int:
    """Delete raw messages, events and windows older than the retention; hourly roll-ups stay."""
    cutoff = datetime.now(UTC) - raw_retention
    removed = 0
    for table, column in ((DeviceMessage, DeviceMessage.received_at), (DeviceEvent, DeviceEvent.ts),
                          (ModelWindow, ModelWindow.ts)):
        result: Any = session.execute(delete(table).where(column < cutoff))
        removed += int(result.rowcount or 0)
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
    """Per model version, the figures since ``since``; the request rate is over all that time.

    Agents send no window for a model that served nothing, so the windows' own length is only the time
    spent serving: a burst of 100 requests nine minutes ago is 0.17 req/s over ten minutes, not 200.
    """
    pairs = sorted((str(m), str(v)) for m, v in session.execute(
        select(ModelWindow.model, ModelWindow.version).where(ModelWindow.ts >= since).distinct()))
    seconds = (datetime.now(UTC) - since).total_seconds()
    return [replace(version_health(session, model=m, version=v, device_ids=None, since=since), seconds=seconds)
            for m, v in pairs]


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
