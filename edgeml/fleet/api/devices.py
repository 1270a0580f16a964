"""Devices: inventory, tags/groups and the device heartbeat (enrolment and revocation: ``enrolment``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeml.fleet import audit
from edgeml.fleet.api.schemas import DeviceOut, DevicePatch, Heartbeat
from edgeml.fleet.auth import Deployer, DeviceCaller, Viewer
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.store.models import Device, as_utc, utcnow

router = APIRouter(prefix="/v1", tags=["devices"])
Ctx = Annotated[FleetContext, Depends(get_context)]


def device_online(row: Device, online_window_s: float, now: datetime) -> bool:
    """Contact within the window, and the broker's retained status (the agent's goodbye or its last will)
    is not "offline": the one definition the device list, the dashboard and ``/metrics`` share.

    The status alone decides once it says offline, not a comparison with ``last_seen``: that is stamped
    with the device's clock when telemetry arrives, the status with the server's. A device that comes
    back publishes "online" again as soon as it reconnects.
    """
    last_seen = as_utc(row.last_seen)
    return (row.revoked_at is None and last_seen is not None and row.mqtt_status != "offline"
            and (now - last_seen).total_seconds() <= online_window_s)


def device_out(row: Device, online_window_s: float, now: datetime | None = None) -> DeviceOut:
    online = device_online(row, online_window_s, now or utcnow())
    return DeviceOut(id=row.id, name=row.name, group=row.group, tags=list(row.tags), hardware=row.hardware,
                     installed=row.installed, enrolled_at=row.enrolled_at, last_seen=row.last_seen,
                     online=online, revoked=row.revoked_at is not None)


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(caller: Viewer, ctx: Ctx, group: str | None = None, tag: str | None = None,
                 online: bool | None = None, include_revoked: bool = False) -> list[DeviceOut]:
    query = select(Device).order_by(Device.enrolled_at)
    if group is not None:
        query = query.where(Device.group == group)
    if not include_revoked:
        query = query.where(Device.revoked_at.is_(None))
    now = utcnow()
    with ctx.store.session() as session:
        out = [device_out(r, ctx.online_window_s, now) for r in session.scalars(query)]
    # Tags are a JSON list: filtered here so SQLite and PostgreSQL behave the same.
    return [d for d in out if (tag is None or tag in d.tags) and (online is None or d.online == online)]


def _get_device(session: Session, device_id: str) -> Device:
    row = session.get(Device, device_id)
    if row is None:
        raise HTTPException(status_code=404, detail=f"no device '{device_id}' (see 'edgeml-fleet devices list')")
    return row


@router.get("/devices/{device_id}", response_model=DeviceOut)
def show_device(device_id: str, caller: Viewer, ctx: Ctx) -> DeviceOut:
    with ctx.store.session() as session:
        return device_out(_get_device(session, device_id), ctx.online_window_s)


@router.patch("/devices/{device_id}", response_model=DeviceOut)
def update_device(device_id: str, body: DevicePatch, request: Request, caller: Deployer, ctx: Ctx) -> DeviceOut:
    with ctx.store.session() as session:
        row = _get_device(session, device_id)
        changes: dict[str, object] = {}
        if body.name is not None and body.name != row.name:
            row.name = changes["name"] = body.name
        if "group" in body.model_fields_set:
            group = body.group or None
            if group != row.group:
                row.group = group
                changes["group"] = group
        tags = (set(row.tags) | set(body.add_tags)) - set(body.remove_tags)
        if tags != set(row.tags):
            row.tags = sorted(tags)
            changes["tags"] = row.tags
        if changes:
            audit.record(session, request, caller.name, "device.update", device_id, **changes)
        return device_out(row, ctx.online_window_s)


@router.post("/device/heartbeat", response_model=DeviceOut)
def heartbeat(body: Heartbeat, caller: DeviceCaller, ctx: Ctx) -> DeviceOut:
    """A device reports that it is alive, and optionally its current hardware probe and installed versions."""
    assert caller.device_id is not None
    with ctx.store.session() as session:
        row = _get_device(session, caller.device_id)
        row.last_seen = utcnow()
        if body.hardware is not None:
            row.hardware = body.hardware
        if body.installed is not None:
            row.installed = body.installed
        return device_out(row, ctx.online_window_s)
