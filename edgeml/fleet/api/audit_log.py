"""Query the audit log (admins only: it shows who did what from where)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from edgeml.fleet.api.schemas import AuditOut
from edgeml.fleet.auth import Admin
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.store.models import AuditEntry

router = APIRouter(prefix="/v1", tags=["audit"])
Ctx = Annotated[FleetContext, Depends(get_context)]


@router.get("/audit", response_model=list[AuditOut])
def query_audit(
    caller: Admin,
    ctx: Ctx,
    actor: str | None = None,
    action: Annotated[str | None, Query(description="exact action, or a prefix ending in '.' (e.g. 'device.')")] = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditOut]:
    query = select(AuditEntry)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if action is not None:
        prefix = action.endswith(".")   # "rollout." means every rollout action
        query = query.where(AuditEntry.action.startswith(action) if prefix else AuditEntry.action == action)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at <= until)
    with ctx.store.session() as session:
        rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit))
        return [AuditOut(id=r.id, at=r.at, actor=r.actor, action=r.action, target=r.target, source=r.source,
                         details=r.details) for r in rows]
