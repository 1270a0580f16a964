"""Devices: enrolment tokens, enrolment, inventory, tags/groups, revocation, and the device heartbeat."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import ColumnElement, Select, and_, or_, select, update
from sqlalchemy.orm import Session

from edgeml.fleet import audit
from edgeml.fleet.api.pages import (
    DEFAULT_PAGE,
    MAX_PAGE,
    Page,
    decode_cursor,
    encode_cursor,
    parse_fields,
    select_fields,
)
from edgeml.fleet.api.schemas import (
    DeviceOut,
    DevicePatch,
    EnrollRequest,
    EnrollResponse,
    EnrollTokenCreate,
    EnrollTokenCreated,
    Heartbeat,
    MqttCredentials,
)
from edgeml.fleet.api.tokens import issue_token
from edgeml.fleet.auth import DEVICE_ROLE, Admin, Credentials, Deployer, DeviceCaller, Viewer, unauthorized
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.credentials import (
    ENROLL_TOKEN_PREFIX,
    hashes_match,
    mosquitto_hash,
    new_id,
    new_secret,
    token_hash,
)
from edgeml.fleet.store.models import ApiToken, Device, EnrollmentToken, TrustedKey, as_utc, utcnow
from edgeml.protocol import device_prefix

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


def require_enrollment(request: Request, credentials: Credentials) -> str:
    """Dependency: a valid, unused, unexpired enrolment token (efe_…); returns its id."""
    if credentials is None or not credentials.credentials:
        raise unauthorized("missing enrolment token: create one with 'edgeml-fleet enroll-token create'")
    return _enrollment_token_id(get_context(request), credentials)


def _enrollment_token_id(ctx: FleetContext, credentials: HTTPAuthorizationCredentials) -> str:
    digest = token_hash(credentials.credentials)
    with ctx.store.session() as session:
        row = session.scalars(select(EnrollmentToken).where(EnrollmentToken.token_hash == digest)).first()
        if row is None or not hashes_match(row.token_hash, digest):
            raise unauthorized("unknown enrolment token: create one with 'edgeml-fleet enroll-token create'")
        if row.used_at is not None:
            raise unauthorized("this enrolment token was already used (they are one-time): create a new one")
        expires = as_utc(row.expires_at)
        assert expires is not None
        if expires <= utcnow():
            raise unauthorized(f"this enrolment token expired at {expires.isoformat()}: create a new one")
        return row.id


EnrollmentTokenId = Annotated[str, Depends(require_enrollment)]


@router.post("/enrollment-tokens", response_model=EnrollTokenCreated, status_code=201)
def create_enrollment_token(body: EnrollTokenCreate, request: Request, caller: Deployer,
                            ctx: Ctx) -> EnrollTokenCreated:
    secret = new_secret(ENROLL_TOKEN_PREFIX)
    row = EnrollmentToken(id=new_id("enr_"), token_hash=token_hash(secret), group=body.group, tags=body.clean_tags(),
                          created_at=utcnow(), created_by=caller.name,
                          expires_at=utcnow() + timedelta(seconds=body.expires_in_s))
    with ctx.store.session() as session:
        session.add(row)
        audit.record(session, request, caller.name, "enrollment_token.create", row.id, group=row.group,
                     tags=row.tags, expires_at=row.expires_at.isoformat())
    return EnrollTokenCreated(id=row.id, token=secret, group=row.group, tags=row.tags, expires_at=row.expires_at)


@router.post("/enroll", response_model=EnrollResponse, status_code=201)
def enroll(body: EnrollRequest, request: Request, enrollment_id: EnrollmentTokenId, ctx: Ctx) -> EnrollResponse:
    device_id = new_id("dev-")
    mqtt_password = secrets.token_urlsafe(24)
    with ctx.store.session() as session:
        # One-time: only the request that flips used_at from NULL wins, even if two race.
        claimed = session.execute(
            update(EnrollmentToken)
            .where(EnrollmentToken.id == enrollment_id, EnrollmentToken.used_at.is_(None))
            .values(used_at=utcnow(), device_id=device_id)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise unauthorized("this enrolment token was already used (they are one-time): create a new one")
        token_row = session.get(EnrollmentToken, enrollment_id)
        assert token_row is not None
        device = Device(id=device_id, name=body.name or device_id, group=token_row.group, tags=list(token_row.tags),
                        hardware=body.hardware, installed=body.installed, enrolled_at=utcnow(), last_seen=utcnow(),
                        mqtt_password_hash=mosquitto_hash(mqtt_password))
        session.add(device)
        session.flush()
        api_row, api_secret = issue_token(f"device:{device_id}", DEVICE_ROLE, f"enrollment:{enrollment_id}",
                                          device_id=device_id)
        session.add(api_row)
        audit.record(session, request, f"enrollment:{enrollment_id}", "device.enroll", device_id,
                     name=device.name, group=device.group, tags=device.tags)
    ctx.credentials_changed()
    host = ctx.broker.host or request.url.hostname or "127.0.0.1"
    desired_key, bundle_keys = _fleet_keys(ctx)
    return EnrollResponse(device_id=device_id, api_token=api_secret, mqtt=MqttCredentials(
        host=host, port=ctx.broker.port, tls=ctx.broker.tls, username=device_id, password=mqtt_password,
        topic_prefix=device_prefix(device_id)), desired_key_pem=desired_key, trusted_keys=bundle_keys)


def _fleet_keys(ctx: FleetContext) -> tuple[str, list[str]]:
    """What a new device must trust: the fleet's desired-state key and the keys its bundles are signed with."""
    from edgeml.fleet.rollouts.desired_docs import fleet_signing_key

    with ctx.store.session() as session:
        bundle_keys = [r.public_pem for r in session.scalars(select(TrustedKey).order_by(TrustedKey.key_id))]
    return fleet_signing_key(ctx.store).public_pem().decode(), bundle_keys


@router.get("/devices", response_model=list[DeviceOut] | Page)
def list_devices(caller: Viewer, ctx: Ctx, group: str | None = None, tag: str | None = None,
                 online: bool | None = None, include_revoked: bool = False,
                 limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description=(
                     f"page size (default {DEFAULT_PAGE}); with limit, cursor or fields the answer is a page: "
                     "{items, next_cursor}"))] = None,
                 cursor: Annotated[str | None, Query(max_length=400, description="next_cursor of the previous "
                                                                                  "page")] = None,
                 fields: Annotated[str | None, Query(max_length=400, description="comma-separated fields of "
                                                                                 "each item, e.g. id,online")] = None,
                 ) -> list[DeviceOut] | Page:
    """Devices in enrolment order. Without limit/cursor/fields: all of them as a list (the old form, for
    small fleets); with any of them: one page, ``next_cursor`` null on the last one."""
    paged = limit is not None or cursor is not None or fields is not None
    wanted = parse_fields(fields, DeviceOut.model_fields)
    query = select(Device).order_by(Device.enrolled_at, Device.id)
    if group is not None:
        query = query.where(Device.group == group)
    if not include_revoked:
        query = query.where(Device.revoked_at.is_(None))
    now = utcnow()
    if online is not None:
        query = query.where(online_clause(ctx.online_window_s, now) if online
                            else ~online_clause(ctx.online_window_s, now))
    if cursor is not None:
        at, last_id = decode_cursor(cursor, 2)
        try:
            after = datetime.fromisoformat(at)
        except ValueError:
            raise HTTPException(400, "this cursor holds no enrolment time: start again without it") from None
        query = query.where(or_(Device.enrolled_at > after, and_(Device.enrolled_at == after, Device.id > last_id)))
    size = (limit or DEFAULT_PAGE) if paged else None
    items, last = _scan_devices(ctx, query, tag, size, now)
    if not paged:
        return items
    next_cursor = encode_cursor(_iso(last.enrolled_at), last.id) if last is not None else None
    return Page(items=[select_fields(d.model_dump(mode="json"), wanted) for d in items], next_cursor=next_cursor)


def online_clause(online_window_s: float, now: datetime) -> ColumnElement[bool]:
    """SQL for :func:`device_online` (same rules), so the online filter runs in the index, not in Python."""
    return and_(Device.revoked_at.is_(None), Device.last_seen.is_not(None),
                Device.last_seen >= now - timedelta(seconds=online_window_s),
                or_(Device.mqtt_status.is_(None), Device.mqtt_status != "offline"))


def _iso(value: datetime) -> str:
    aware = as_utc(value)
    assert aware is not None
    return aware.isoformat()


def _scan_devices(ctx: FleetContext, query: Select[Device], tag: str | None, size: int | None,
                  now: datetime) -> tuple[list[DeviceOut], Device | None]:
    """Up to ``size`` devices (all when None) in key order, and the last one sent if more may follow.

    Tags are a JSON list, filtered here so SQLite and PostgreSQL behave the same: rows are read in
    chunks until the page is full.
    """
    out: list[DeviceOut] = []
    chunk = max(size or 0, 500)
    last: Device | None = None
    with ctx.store.reader() as session:
        while True:
            rows = list(session.scalars(_after(query, last).limit(chunk)))
            for row in rows:
                if tag is None or tag in (row.tags or []):
                    out.append(device_out(row, ctx.online_window_s, now))
                last = row
                if size is not None and len(out) == size:
                    return out, row
            if len(rows) < chunk:
                return out, None


def _after(query: Select[Device], last: Device | None) -> Select[Device]:
    if last is None:
        return query
    return query.where(or_(Device.enrolled_at > last.enrolled_at,
                           and_(Device.enrolled_at == last.enrolled_at, Device.id > last.id)))


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


@router.post("/devices/{device_id}/revoke", response_model=DeviceOut)
def revoke_device(device_id: str, request: Request, caller: Admin, ctx: Ctx) -> DeviceOut:
    with ctx.store.session() as session:
        row = _get_device(session, device_id)
        if row.revoked_at is None:
            now = utcnow()
            row.revoked_at = now
            session.execute(update(ApiToken).where(ApiToken.device_id == device_id, ApiToken.revoked_at.is_(None))
                            .values(revoked_at=now))
            audit.record(session, request, caller.name, "device.revoke", device_id, name=row.name)
        out = device_out(row, ctx.online_window_s)
    ctx.device_revoked(device_id)
    ctx.credentials_changed()
    return out


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
