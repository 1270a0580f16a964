"""Enrolment tokens, enrolment and revocation: who may join the fleet and log in to its broker.

Enrolment is one database transaction: the one-time token is claimed and the device, its API token and
its broker password hash are created together, or nothing is. Where the broker keeps its own credential
list (managed Mosquitto, a synced password file), the broker is told first and must confirm before that
transaction starts; if it does not, the caller gets a 503 that says to try again and nothing happened
(the token is still unused). If the transaction then fails, the broker is told to forget the device
again; a leftover would be harmless (nobody knows its password) and is gone at the broker's next start,
which rebuilds its list from the store. So a used token always has its device, and every device in the
store can log in. (The broker is not asked *inside* the transaction: on SQLite that would hold the
database's one write lock for a broker round trip.) Revocation: the broker forgets the device inside the
revocation's transaction, before it commits.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from edgeml.errors import EdgeMLError
from edgeml.fleet import audit
from edgeml.fleet.api.devices import device_out
from edgeml.fleet.api.schemas import (
    DeviceOut,
    EnrollRequest,
    EnrollResponse,
    EnrollTokenCreate,
    EnrollTokenCreated,
    MqttCredentials,
)
from edgeml.fleet.api.tokens import issue_token
from edgeml.fleet.auth import DEVICE_ROLE, Admin, Credentials, Deployer, unauthorized
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

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["devices"])
Ctx = Annotated[FleetContext, Depends(get_context)]
RETRY_AFTER_S = "2"


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


def broker_unavailable(action: str, exc: Exception) -> HTTPException:
    return HTTPException(status_code=503, headers={"Retry-After": RETRY_AFTER_S},
                         detail=f"the MQTT broker did not confirm the {action} ({exc}); nothing was changed: "
                                "try again (an enrolment token stays valid)")


@router.post("/enroll", response_model=EnrollResponse, status_code=201)
def enroll(body: EnrollRequest, request: Request, enrollment_id: EnrollmentTokenId, ctx: Ctx) -> EnrollResponse:
    device_id = new_id("dev-")
    mqtt_password = secrets.token_urlsafe(24)
    if ctx.broker_credentials is not None:
        try:
            ctx.broker_credentials.add_device(device_id, mqtt_password)
        except EdgeMLError as exc:
            raise broker_unavailable("new device's credentials", exc) from exc
    try:
        with ctx.store.session() as session:
            api_secret = _create_device(session, request, enrollment_id, device_id, body, mqtt_password)
    except BaseException:
        if ctx.broker_credentials is not None:  # the broker took a device that does not exist: take it back
            _forget_quietly(ctx, device_id)
        raise
    ctx.credentials_changed()   # its listeners: a rollout whose selector the new device matches takes it in
    host = ctx.broker.host or request.url.hostname or "127.0.0.1"
    desired_key, bundle_keys = _fleet_keys(ctx)
    return EnrollResponse(device_id=device_id, api_token=api_secret, mqtt=MqttCredentials(
        host=host, port=ctx.broker.port, tls=ctx.broker.tls, username=device_id, password=mqtt_password,
        topic_prefix=device_prefix(device_id)), desired_key_pem=desired_key, trusted_keys=bundle_keys)


def _create_device(session: Session, request: Request, enrollment_id: str, device_id: str, body: EnrollRequest,
                   mqtt_password: str) -> str:
    """Claim the token and create the device with its API token; returns the API token's secret."""
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
    return api_secret


def _forget_quietly(ctx: FleetContext, device_id: str) -> None:
    try:
        assert ctx.broker_credentials is not None
        ctx.broker_credentials.remove_device(device_id)
    except EdgeMLError:
        # Nobody knows that password; the broker's list is rebuilt from the store at its next start.
        log.warning("could not take back broker credentials of the device that failed to enrol: %s", device_id)


def _fleet_keys(ctx: FleetContext) -> tuple[str, list[str]]:
    """What a new device must trust: the fleet's desired-state key and the keys its bundles are signed with."""
    from edgeml.fleet.rollouts.desired_docs import fleet_signing_key

    with ctx.store.session() as session:
        bundle_keys = [r.public_pem for r in session.scalars(select(TrustedKey).order_by(TrustedKey.key_id))]
    return fleet_signing_key(ctx.store).public_pem().decode(), bundle_keys


@router.post("/devices/{device_id}/revoke", response_model=DeviceOut)
def revoke_device(device_id: str, request: Request, caller: Admin, ctx: Ctx) -> DeviceOut:
    try:
        with ctx.store.session() as session:
            row = session.get(Device, device_id)
            if row is None:
                raise HTTPException(status_code=404,
                                    detail=f"no device '{device_id}' (see 'edgeml-fleet devices list')")
            if row.revoked_at is None:
                now = utcnow()
                row.revoked_at = now
                session.execute(update(ApiToken).where(ApiToken.device_id == device_id,
                                                       ApiToken.revoked_at.is_(None)).values(revoked_at=now))
                audit.record(session, request, caller.name, "device.revoke", device_id, name=row.name)
                if ctx.broker_credentials is not None:  # the broker drops it (and its connections) first
                    ctx.broker_credentials.remove_device(device_id)
            out = device_out(row, ctx.online_window_s)
    except EdgeMLError as exc:
        raise broker_unavailable("revocation", exc) from exc
    ctx.device_revoked(device_id)
    ctx.credentials_changed()
    return out
