"""Per-version history from the minute roll-ups (``GET /v1/health/history``): what the dashboard charts
after a reload, instead of what the page happened to see while open.

A step with no roll-up row is ``null`` in every figure, never 0: agents send no window for a model that
served nothing, so "no row" means "no data", and a chart must draw a gap there, not 0 ms.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgeml.fleet.store.rollup_models import DeviceVersion, VersionMinute
from edgeml.fleet.store.telemetry_models import ModelHourly
from edgeml.telemetry.latency import merge, percentile

MAX_POINTS = 1440   # a day at one-minute steps; more is refused (the caller widens the step)


def version_history(session: Session, *, model: str, version: str | None, minutes: int, step: int,
                    now: datetime | None = None) -> list[dict[str, Any]]:
    """One series per version of ``model`` (or just ``version``) with data in the last ``minutes``:
    ``points`` of ``step``-minute buckets, oldest first, each ``{t, requests, errors, error_rate, p50_ms,
    p95_ms, p99_ms}`` (all null for a bucket without data), the version's current ``drift`` and its
    ``drift_hourly`` history."""
    end = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
    count = -(-minutes // step)
    start = end - timedelta(minutes=step * count - 1)   # the last bucket ends with the current minute
    vm = VersionMinute
    query = select(vm.version, vm.minute, vm.requests, vm.errors, vm.latency).where(
        vm.model == model, vm.minute >= start, vm.minute <= end)
    if version is not None:
        query = query.where(vm.version == version)
    buckets: dict[str, dict[int, tuple[int, int, list[list[int]]]]] = {}
    for v, minute, requests, errors, latency in session.execute(query):
        at = minute if minute.tzinfo else minute.replace(tzinfo=UTC)
        i = int((at - start).total_seconds() // 60) // step
        r, e, hs = buckets.setdefault(v, {}).get(i, (0, 0, []))
        buckets[v][i] = (r + int(requests), e + int(errors), [*hs, latency])
    dv = DeviceVersion
    drift = {str(v): d for v, d in session.execute(
        select(dv.version, func.max(dv.drift)).where(dv.model == model, dv.version.in_(list(buckets)))
        .group_by(dv.version)) if d is not None}
    hourly = _drift_by_hour(session, model, list(buckets), start)
    return [{"model": model, "version": v, "step_s": step * 60, "drift": drift.get(v),
             "drift_hourly": hourly.get(v, []),
             "points": [_point(start + timedelta(minutes=step * i), per_bucket.get(i)) for i in range(count)]}
            for v, per_bucket in sorted(buckets.items())]


def _drift_by_hour(session: Session, model: str, versions: list[str],
                   start: datetime) -> dict[str, list[dict[str, Any]]]:
    """Per version, the largest device drift of each hour that has one (``model_hourly`` keeps each device's
    last score of the hour), from the hour holding ``start``: drift changes slowly, and the per-minute
    roll-up has no drift column."""
    h = ModelHourly
    out: dict[str, list[dict[str, Any]]] = {}
    for v, hour, score in session.execute(
            select(h.version, h.hour, func.max(h.drift)).where(
                h.model == model, h.version.in_(versions), h.hour >= start.replace(minute=0), h.drift.is_not(None))
            .group_by(h.version, h.hour).order_by(h.version, h.hour)):
        at = hour if hour.tzinfo else hour.replace(tzinfo=UTC)
        if score is not None:
            out.setdefault(str(v), []).append({"t": at.isoformat(), "drift": score})
    return out


def _point(at: datetime, bucket: tuple[int, int, list[list[int]]] | None) -> dict[str, Any]:
    if bucket is None:
        return {"t": at.isoformat(), "requests": None, "errors": None, "error_rate": None,
                "p50_ms": None, "p95_ms": None, "p99_ms": None}
    requests, errors, histograms = bucket
    latency = merge(histograms)
    return {"t": at.isoformat(), "requests": requests, "errors": errors,
            "error_rate": round(errors / requests, 5) if requests else None,
            "p50_ms": percentile(latency, 50), "p95_ms": percentile(latency, 95), "p99_ms": percentile(latency, 99)}
