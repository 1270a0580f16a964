"""Who is calling: bearer tokens, roles, and the FastAPI dependencies every route uses.

Roles are ordered (viewer < deployer < admin); a route names the lowest role it accepts. Device tokens
carry the role ``device`` and only open device routes (and bundle downloads), never people's routes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.credentials import hashes_match, token_hash
from edgeml.fleet.store.models import ApiToken, Device, as_utc, utcnow

PERSON_ROLES = ("viewer", "deployer", "admin")
DEVICE_ROLE = "device"
_RANK = {role: i for i, role in enumerate(PERSON_ROLES)}

bearer = HTTPBearer(auto_error=False, description="An edgeml-fleet API token (efl_…)")


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    role: str
    device_id: str | None = None


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def authenticate(ctx: FleetContext, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if credentials is None or not credentials.credentials:
        raise unauthorized("missing API token: send 'Authorization: Bearer <token>'")
    digest = token_hash(credentials.credentials)
    with ctx.store.session() as session:
        row = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).first()
        if row is None or not hashes_match(row.token_hash, digest):
            raise unauthorized("unknown API token: check the token or create a new one with "
                               "'edgeml-fleet tokens create'")
        if row.revoked_at is not None:
            raise unauthorized(f"API token '{row.name}' was revoked")
        expires = as_utc(row.expires_at)
        if expires is not None and expires <= utcnow():
            raise unauthorized(f"API token '{row.name}' expired at {expires.isoformat()}")
        if row.device_id is not None:
            device = session.get(Device, row.device_id)
            if device is None or device.revoked_at is not None:
                raise unauthorized(f"device {row.device_id} was revoked")
        return Principal(row.id, row.name, row.role, row.device_id)


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require_role(minimum: str) -> Callable[..., Principal]:
    """Dependency: a person's token with at least ``minimum`` role."""

    def dependency(request: Request, credentials: Credentials) -> Principal:
        principal = authenticate(get_context(request), credentials)
        if principal.role not in _RANK or _RANK[principal.role] < _RANK[minimum]:
            raise HTTPException(
                status_code=403,
                detail=f"this needs the '{minimum}' role; the token '{principal.name}' has '{principal.role}'",
            )
        return principal

    dependency.__name__ = f"require_{minimum}"
    return dependency


def require_device(request: Request, credentials: Credentials) -> Principal:
    """Dependency: a device's own token."""
    principal = authenticate(get_context(request), credentials)
    if principal.role != DEVICE_ROLE:
        raise HTTPException(status_code=403, detail="this endpoint is for enrolled devices (a device token)")
    return principal


def require_viewer_or_device(request: Request, credentials: Credentials) -> Principal:
    """Dependency: any valid token (people and devices both download bundles)."""
    return authenticate(get_context(request), credentials)


Viewer = Annotated[Principal, Depends(require_role("viewer"))]
Deployer = Annotated[Principal, Depends(require_role("deployer"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
DeviceCaller = Annotated[Principal, Depends(require_device)]
AnyCaller = Annotated[Principal, Depends(require_viewer_or_device)]
