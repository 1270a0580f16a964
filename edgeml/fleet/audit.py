"""The audit log: one row per change, written in the same transaction as the change itself."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from edgeml.fleet.store.models import AuditEntry


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def record(session: Session, request: Request, actor: str, action: str, target: str, **details: Any) -> None:
    session.add(AuditEntry(actor=actor, action=action, target=target, source=client_address(request), details=details))
