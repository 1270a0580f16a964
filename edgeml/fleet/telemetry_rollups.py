"""What ingest derives from a batch of new telemetry windows, written in a handful of statements per batch.

For each batch, and only from messages seen for the first time (see ``telemetry_store.store_messages``):
per-window rows (``model_windows``, raw, pruned with the messages), drift scores against the bundle's
reference, hourly per-device roll-ups, the per-(device, model, version) roll-up and the per-minute
fleet roll-up the API reads (``store.rollup_models``).

The statements are the same whatever the batch size: one read of the rows a batch touches (locked
``FOR UPDATE`` on PostgreSQL, in key order, so two ingest processes on one database wait for each
other instead of losing an update or deadlocking), then ``executemany`` inserts and updates. Nothing is
looked up message by message; a batch with rows that another process created first fails as a whole
and the caller retries it (the raw (device, seq) key makes the retry idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from typing import cast as type_cast

from sqlalchemy import Table, case, func, select, tuple_
from sqlalchemy.orm import Session

from edgeml.fleet.bulk_sql import dialect_insert, insert_rows, update_rows
from edgeml.fleet.store.models import Bundle
from edgeml.fleet.store.rollup_models import DeviceVersion, VersionMinute
from edgeml.fleet.store.telemetry_models import DriftScore, ModelHourly, ModelWindow
from edgeml.telemetry.drift import drift_report, merge_summaries
from edgeml.telemetry.latency import merge, percentile

Key = tuple[Any, ...]


@dataclass(frozen=True)
class Window:
    """One model version's figures in one telemetry message."""

    device_id: str
    seq: int
    ts: datetime
    model: str
    version: str
    window_s: float
    requests: int
    errors: int
    latency: list[int]
    stats: dict[str, Any]
    runtime: str | None
    accelerator: str | None
    fallback: bool | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.device_id, self.model, self.version)

    @property
    def samples(self) -> int:
        try:
            return int(self.stats.get("samples") or 0)
        except (TypeError, ValueError):
            return 0


def parse_windows(device_id: str, seq: int, ts: datetime, body: Mapping[str, Any]) -> list[Window]:
    """The model entries of a telemetry body; a malformed entry is skipped (its raw message is kept)."""
    out: list[Window] = []
    window_s = float(body.get("window_s") or 0.0)
    for m in body.get("models") or []:
        try:
            latency = [int(c) for c in m["latency_ms"]["buckets"]]
            errors = sum(int(v) for v in (m.get("errors") or {}).values())
            stats = m.get("stats") or {}
            out.append(Window(device_id, seq, ts, str(m["model"]), str(m["version"]), window_s, int(m["requests"]),
                              errors, latency, stats if isinstance(stats, dict) else {}, m.get("runtime"),
                              m.get("device"), m.get("fallback")))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


class ReferenceCache:
    """Bundles' ``reference_stats`` by (name, version), read once per ``ttl_s`` rather than per batch.

    A version the fleet has no bundle for is remembered as "no reference" for the same time, so a bundle
    uploaded after its devices started reporting is picked up within ``ttl_s``.
    """

    def __init__(self, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    def lookup(self, session: Session, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        now = self._clock()
        wanted = set(keys)
        stale = sorted(k for k in wanted if k not in self._entries or self._entries[k][0] <= now)
        if stale:
            found = {(str(n), str(v)): dict((manifest or {}).get("reference_stats") or {})
                     for n, v, manifest in session.execute(
                         select(Bundle.name, Bundle.version, Bundle.manifest)
                         .where(tuple_(Bundle.name, Bundle.version).in_(stale)))}
            for k in stale:
                self._entries[k] = (now + self.ttl_s, found.get(k, {}))
        return {k: self._entries[k][1] for k in wanted}


def update_rollups(session: Session, windows: Sequence[Window], *, writer: str, references: ReferenceCache) -> None:
    """Insert the windows of new messages and fold them into every roll-up (one transaction, the caller's)."""
    if not windows:
        return
    ordered = sorted(windows, key=lambda w: (w.device_id, w.seq, w.model, w.version))
    insert_rows(session, table_of(ModelWindow), [
        {"device_id": w.device_id, "seq": w.seq, "model": w.model, "version": w.version, "ts": w.ts,
         "window_s": w.window_s, "requests": w.requests, "errors": w.errors, "latency": w.latency,
         "stats": w.stats, "runtime": w.runtime, "accelerator": w.accelerator, "fallback": w.fallback}
        for w in ordered])
    drift = _update_drift(session, ordered, references)
    _update_hourly(session, ordered, drift)
    _upsert_device_versions(session, ordered, drift)
    _update_minutes(session, ordered, writer)


def table_of(model: type[Any]) -> Table:
    return type_cast(Table, model.__table__)


def _merge_rows(session: Session, table: Table, new: Mapping[Key, dict[str, Any]],
                combine: Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]]) -> None:
    """Read the rows of ``new``'s keys (locked on PostgreSQL), then insert the missing ones and update the
    others with ``combine(old, new)``, each as one statement (see ``bulk_sql``)."""
    pk = list(table.primary_key.columns)
    keys = sorted(new)
    existing = {tuple(r[c.name] for c in pk): r for r in session.execute(
        select(table).where(tuple_(*pk).in_(keys)).order_by(*pk).with_for_update()).mappings()}
    inserts = [new[k] for k in keys if k not in existing]
    updates = [{**{f"k_{c.name}": existing[k][c.name] for c in pk},
                **{f"v_{n}": v for n, v in combine(dict(existing[k]), new[k]).items()}} for k in keys if k in existing]
    insert_rows(session, table, inserts)
    update_rows(session, table, updates)


def _update_drift(session: Session, windows: Sequence[Window],
                  references: ReferenceCache) -> dict[tuple[str, str, str], float | None]:
    """Fold the batch's input/output summaries into each (device, model, version)'s running summaries and
    score them against the bundle's reference once per key per batch."""
    sampled = [w for w in windows if w.samples]
    if not sampled:
        return {}
    refs = references.lookup(session, {(w.model, w.version) for w in sampled})
    by_key: dict[tuple[str, str, str], list[Window]] = {}
    for w in sampled:
        if refs.get((w.model, w.version)):
            by_key.setdefault(w.key, []).append(w)
    if not by_key:
        return {}
    table = table_of(DriftScore)
    scores: dict[tuple[str, str, str], float | None] = {}
    new: dict[Key, dict[str, Any]] = {}
    existing = {(r.device_id, r.model, r.version): r for r in session.execute(
        select(table.c.device_id, table.c.model, table.c.version, table.c.summaries)
        .where(tuple_(table.c.device_id, table.c.model, table.c.version).in_(sorted(by_key)))
        .order_by(table.c.device_id, table.c.model, table.c.version).with_for_update())}
    for key, group in by_key.items():
        old = existing.get(key)
        summaries: dict[str, Any] = dict(old.summaries) if old is not None else {"inputs": {}, "outputs": {}}
        for side in ("inputs", "outputs"):
            merged = dict(summaries.get(side) or {})
            for w in group:
                for name, s in (w.stats.get(side) or {}).items():
                    merged[name] = merge_summaries([merged[name], s]) if name in merged else merge_summaries([s])
            summaries[side] = merged
        report = drift_report(refs[(key[1], key[2])], summaries)
        scores[key] = report["score"]
        new[key] = {"device_id": key[0], "model": key[1], "version": key[2], "score": report["score"],
                    "tensors": report["tensors"], "summaries": summaries, "updated_at": group[-1].ts}
    _merge_rows(session, table, new, lambda old, row: {k: row[k] for k in ("score", "tensors", "summaries",
                                                                             "updated_at")})
    return scores


def _update_hourly(session: Session, windows: Sequence[Window],
                   drift: Mapping[tuple[str, str, str], float | None]) -> None:
    new: dict[Key, dict[str, Any]] = {}
    for w in windows:
        hour = w.ts.replace(minute=0, second=0, microsecond=0)
        key = (w.device_id, w.model, w.version, hour)   # aware UTC, as UTCDateTime reads it back
        row = new.setdefault(key, {"device_id": w.device_id, "model": w.model, "version": w.version, "hour": hour,
                                   "requests": 0, "errors": 0, "latency": [], "drift": None})
        row["requests"] += w.requests
        row["errors"] += w.errors
        row["latency"] = merge([row["latency"], w.latency]) if row["latency"] else list(w.latency)
        if w.key in drift and w.samples:
            row["drift"] = drift[w.key]
    _merge_rows(session, table_of(ModelHourly), new, lambda old, row: {
        "requests": old["requests"] + row["requests"], "errors": old["errors"] + row["errors"],
        "latency": merge([old["latency"], row["latency"]]),
        "drift": row["drift"] if row["drift"] is not None else old["drift"]})


def _update_minutes(session: Session, windows: Sequence[Window], writer: str) -> None:
    new: dict[Key, dict[str, Any]] = {}
    for w in windows:
        minute = w.ts.replace(second=0, microsecond=0)
        key = (w.model, w.version, minute, writer)
        row = new.setdefault(key, {"model": w.model, "version": w.version, "minute": minute, "writer": writer,
                                   "windows": 0, "requests": 0, "errors": 0, "latency": []})
        row["windows"] += 1
        row["requests"] += w.requests
        row["errors"] += w.errors
        row["latency"] = merge([row["latency"], w.latency]) if row["latency"] else list(w.latency)
    _merge_rows(session, table_of(VersionMinute), new, lambda old, row: {
        "windows": old["windows"] + row["windows"], "requests": old["requests"] + row["requests"],
        "errors": old["errors"] + row["errors"], "latency": merge([old["latency"], row["latency"]])})


def _upsert_device_versions(session: Session, windows: Sequence[Window],
                            drift: Mapping[tuple[str, str, str], float | None]) -> None:
    """One upsert: counters add up in SQL, so concurrent ingest processes never lose each other's counts."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for w in windows:
        row = rows.get(w.key)
        if row is None:
            row = rows[w.key] = {"device_id": w.device_id, "model": w.model, "version": w.version, "first_ts": w.ts,
                                 "last_ts": w.ts, "windows": 0, "requests": 0, "errors": 0,
                                 "last_p50_ms": None, "last_p95_ms": None, "drift": drift.get(w.key)}
        row["windows"] += 1
        row["requests"] += w.requests
        row["errors"] += w.errors
        row["first_ts"] = min(row["first_ts"], w.ts)
        if w.ts >= row["last_ts"]:
            row["last_ts"] = w.ts
            row["last_p50_ms"], row["last_p95_ms"] = percentile(w.latency, 50), percentile(w.latency, 95)
    table = table_of(DeviceVersion)
    stmt = dialect_insert(session)(table)
    x, t = stmt.excluded, table.c
    newer = x.last_ts >= t.last_ts
    stmt = stmt.on_conflict_do_update(index_elements=[t.device_id, t.model, t.version], set_={
        "windows": t.windows + x.windows, "requests": t.requests + x.requests, "errors": t.errors + x.errors,
        "first_ts": case((x.first_ts < t.first_ts, x.first_ts), else_=t.first_ts),
        "last_ts": case((newer, x.last_ts), else_=t.last_ts),
        "last_p50_ms": case((newer, x.last_p50_ms), else_=t.last_p50_ms),
        "last_p95_ms": case((newer, x.last_p95_ms), else_=t.last_p95_ms),
        "drift": func.coalesce(x.drift, t.drift)})
    session.execute(stmt, [rows[k] for k in sorted(rows)])

