"""Telemetry queries: one device's recent figures and events, fleet-wide health per model version, and
the fleet's Prometheus metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from sqlalchemy import func, select

from edgeml.fleet.api.devices import online_clause
from edgeml.fleet.api.fleet_metrics import (
    WINDOW,
    Family,
    capture_family,
    render,
    rollout_families,
    version_families,
)
from edgeml.fleet.api.history import MAX_POINTS, version_history
from edgeml.fleet.auth import Viewer
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.store.models import Device
from edgeml.fleet.telemetry_store import device_telemetry, fleet_health

router = APIRouter(prefix="/v1", tags=["telemetry"])
metrics_router = APIRouter(tags=["telemetry"])
Ctx = Annotated[FleetContext, Depends(get_context)]
Minutes = Annotated[float, Query(gt=0, le=60 * 24 * 31, description="look back this many minutes")]


class VersionHealthOut(BaseModel):
    model: str
    version: str
    devices: int
    requests: int
    errors: int
    error_rate: float
    requests_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    drift: float | None


class DeviceTelemetryOut(BaseModel):
    device: str
    windows: list[dict[str, Any]]
    events: list[dict[str, Any]]
    drift: list[dict[str, Any]]
    system: dict[str, Any]


@router.get("/health", response_model=list[VersionHealthOut])
def health(caller: Viewer, ctx: Ctx, minutes: Minutes = 10.0) -> list[VersionHealthOut]:
    since = datetime.now(UTC) - timedelta(minutes=minutes)
    with ctx.store.reader() as session:
        return [VersionHealthOut(**h.to_json()) for h in fleet_health(session, since)]


class HistoryPointOut(BaseModel):
    t: datetime
    requests: int | None
    errors: int | None
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class DriftPointOut(BaseModel):
    t: datetime
    drift: float


class VersionHistoryOut(BaseModel):
    model: str
    version: str
    step_s: int
    drift: float | None
    drift_hourly: list[DriftPointOut]
    points: list[HistoryPointOut]


@router.get("/health/history", response_model=list[VersionHistoryOut])
def health_history(caller: Viewer, ctx: Ctx, model: Annotated[str, Query(min_length=1, max_length=200)],
                   version: Annotated[str | None, Query(max_length=64)] = None,
                   minutes: Annotated[int, Query(ge=1, le=60 * 24 * 7, description="look back this many minutes")] = 60,
                   step: Annotated[int, Query(ge=1, le=60, description="minutes per point")] = 1,
                   ) -> list[VersionHistoryOut]:
    """Per version of ``model``: requests, errors and latency per ``step`` minutes from the minute roll-ups
    (null where no data arrived, never 0), and the version's current drift."""
    if -(-minutes // step) > MAX_POINTS:
        raise HTTPException(400, f"{minutes} minutes at step {step} is over {MAX_POINTS} points: "
                                 f"use step={-(-minutes // MAX_POINTS)} or more")
    with ctx.store.reader() as session:
        return [VersionHistoryOut(**s) for s in version_history(session, model=model, version=version,
                                                                 minutes=minutes, step=step)]


@router.get("/telemetry/{device_id}", response_model=DeviceTelemetryOut)
def telemetry(device_id: str, caller: Viewer, ctx: Ctx, minutes: Minutes = 60.0) -> DeviceTelemetryOut:
    since = datetime.now(UTC) - timedelta(minutes=minutes)
    with ctx.store.reader() as session:
        if session.get(Device, device_id) is None:
            raise HTTPException(404, f"no device '{device_id}'")
        return DeviceTelemetryOut(**device_telemetry(session, device_id, since))


@metrics_router.get("/metrics", response_class=PlainTextResponse,
                    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
def metrics(caller: Viewer, ctx: Ctx) -> PlainTextResponse:
    families: list[Family] = []
    stats = getattr(ctx.ingest, "stats", None)
    if stats is not None:
        families += [
            Family("edgeml_fleet_ingest_messages_total", "counter",
                   "MQTT messages (telemetry, events, status) this process's ingest received", [({}, stats.received)]),
            Family("edgeml_fleet_ingest_stored_total", "counter", "messages stored (first time seen)",
                   [({}, stats.stored)]),
            Family("edgeml_fleet_ingest_duplicates_total", "counter", "redelivered messages dropped by (device, seq)",
                   [({}, stats.duplicates)]),
            Family("edgeml_fleet_ingest_rejected_total", "counter", "malformed or foreign messages",
                   [({}, stats.rejected)])]
    now = datetime.now(UTC)
    with ctx.store.reader() as session:
        rows = fleet_health(session, now - WINDOW)
        enrolled = select(func.count()).select_from(Device).where(Device.revoked_at.is_(None))
        devices = int(session.execute(enrolled).scalar() or 0)
        online = int(session.execute(enrolled.where(online_clause(ctx.online_window_s, now))).scalar() or 0)
        families.append(Family("edgeml_fleet_devices", "gauge",
                               "enrolled devices (not revoked) by state, as in /v1/devices",
                               [({"state": "online"}, online), ({"state": "offline"}, devices - online)]))
        for name, help_text, attr in MODEL_GAUGES:
            families.append(Family(name, "gauge", help_text, [
                ({"model": r.model, "version": r.version}, float(getattr(r, attr)))
                for r in rows if getattr(r, attr) is not None]))
        families += version_families(session, now, ctx.online_window_s)
        families.append(capture_family(session))
        families += rollout_families(session, now)
    return PlainTextResponse(render(families), media_type="text/plain; version=0.0.4")


# /v1/health?minutes=5 as gauges: (metric, help, field of the health row)
MODEL_GAUGES = (
    ("edgeml_fleet_model_requests_per_second", "inference requests per second, last 5 minutes", "requests_per_s"),
    ("edgeml_fleet_model_error_rate", "share of failed requests, last 5 minutes", "error_rate"),
    ("edgeml_fleet_model_latency_p95_ms", "p95 latency in ms across devices, last 5 minutes", "p95_ms"),
    ("edgeml_fleet_model_drift_psi", "largest drift (PSI) against the bundle reference of the devices reporting "
                                     "in the last 5 minutes", "drift"),
)

