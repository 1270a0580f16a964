"""People's API tokens: create (secret shown once), list, revoke; and ``whoami``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select

from edgeml.fleet import audit
from edgeml.fleet.api.schemas import TokenCreate, TokenCreated, TokenOut, WhoAmI
from edgeml.fleet.auth import Admin, AnyCaller
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.credentials import API_TOKEN_PREFIX, new_id, new_secret, token_hash
from edgeml.fleet.store.models import ApiToken, utcnow

router = APIRouter(prefix="/v1", tags=["tokens"])
Ctx = Annotated[FleetContext, Depends(get_context)]


def token_out(row: ApiToken) -> TokenOut:
    return TokenOut(id=row.id, name=row.name, role=row.role, created_at=row.created_at, created_by=row.created_by,
                    expires_at=row.expires_at, revoked_at=row.revoked_at, device_id=row.device_id)


def issue_token(name: str, role: str, created_by: str, *, expires_in_s: int | None = None,
                device_id: str | None = None) -> tuple[ApiToken, str]:
    """A new token row (not yet added to a session) and its secret."""
    secret = new_secret(API_TOKEN_PREFIX)
    expires = utcnow() + timedelta(seconds=expires_in_s) if expires_in_s else None
    row = ApiToken(id=new_id("tok_"), name=name, role=role, token_hash=token_hash(secret), created_at=utcnow(),
                   created_by=created_by, expires_at=expires, device_id=device_id)
    return row, secret


@router.get("/whoami", response_model=WhoAmI)
def whoami(caller: AnyCaller) -> WhoAmI:
    return WhoAmI(token_id=caller.token_id, name=caller.name, role=caller.role, device_id=caller.device_id)


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, request: Request, caller: Admin, ctx: Ctx) -> TokenCreated:
    row, secret = issue_token(body.name, body.role, caller.name, expires_in_s=body.expires_in_s)
    with ctx.store.session() as session:
        session.add(row)
        audit.record(session, request, caller.name, "token.create", row.id, name=row.name, role=row.role,
                     expires_at=row.expires_at.isoformat() if row.expires_at else None)
    return TokenCreated(**token_out(row).model_dump(), token=secret)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(caller: Admin, ctx: Ctx) -> list[TokenOut]:
    with ctx.store.session() as session:
        rows = session.scalars(select(ApiToken).where(ApiToken.device_id.is_(None)).order_by(ApiToken.created_at))
        return [token_out(r) for r in rows]


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: str, request: Request, caller: Admin, ctx: Ctx) -> TokenOut:
    with ctx.store.session() as session:
        row = session.get(ApiToken, token_id)
        if row is None:
            raise HTTPException(status_code=404,
                                detail=f"no token with id '{token_id}' (see 'edgeml-fleet tokens list')")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            audit.record(session, request, caller.name, "token.revoke", row.id, name=row.name)
        return token_out(row)
