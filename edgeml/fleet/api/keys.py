"""The fleet's trusted signing keys: only bundles signed by one of these are accepted on upload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select

from edgeml.bundle import TrustStore, load_public_key
from edgeml.bundle.keys import key_id, public_key_pem
from edgeml.errors import KeyStoreError
from edgeml.fleet import audit
from edgeml.fleet.api.schemas import KeyCreate, KeyOut
from edgeml.fleet.auth import Admin, Viewer
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.store.models import TrustedKey, utcnow

router = APIRouter(prefix="/v1", tags=["keys"])
Ctx = Annotated[FleetContext, Depends(get_context)]


def trust_store(ctx: FleetContext) -> TrustStore:
    with ctx.store.session() as session:
        return TrustStore([load_public_key(r.public_pem.encode()) for r in session.scalars(select(TrustedKey))])


@router.post("/keys", response_model=KeyOut, status_code=201)
def add_key(body: KeyCreate, request: Request, caller: Admin, ctx: Ctx) -> KeyOut:
    if "PRIVATE KEY" in body.public_pem:
        raise HTTPException(status_code=400, detail="that is a private key: send only the public key (<name>.pub)")
    try:
        key = load_public_key(body.public_pem.encode())
    except (KeyStoreError, ValueError) as exc:
        raise HTTPException(status_code=400, detail=f"not an Ed25519 public key in PEM form: {exc}") from exc
    kid = key_id(key)
    with ctx.store.session() as session:
        row = session.get(TrustedKey, kid)
        if row is None:
            row = TrustedKey(key_id=kid, public_pem=public_key_pem(key).decode(), name=body.name, added_at=utcnow())
            session.add(row)
            audit.record(session, request, caller.name, "key.trust", kid, name=body.name)
        return KeyOut(key_id=row.key_id, name=row.name, added_at=row.added_at)


@router.get("/keys", response_model=list[KeyOut])
def list_keys(caller: Viewer, ctx: Ctx) -> list[KeyOut]:
    with ctx.store.session() as session:
        return [KeyOut(key_id=r.key_id, name=r.name, added_at=r.added_at)
                for r in session.scalars(select(TrustedKey).order_by(TrustedKey.added_at))]


@router.delete("/keys/{key_id}", response_model=KeyOut)
def untrust_key(key_id: str, request: Request, caller: Admin, ctx: Ctx) -> KeyOut:
    with ctx.store.session() as session:
        row = session.get(TrustedKey, key_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no trusted key with id '{key_id}'")
        session.delete(row)
        audit.record(session, request, caller.name, "key.untrust", key_id, name=row.name)
        return KeyOut(key_id=row.key_id, name=row.name, added_at=row.added_at)
