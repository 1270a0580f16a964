"""Key roles on the fleet: the bundle signers (only bundles signed by one of them are accepted on upload
and run on devices) and the fleet key (signs desired states only). See :mod:`edgeml.fleet.keyring`."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeml.bundle import TrustStore, load_public_key
from edgeml.bundle.keys import key_id, public_key_pem
from edgeml.errors import KeyStoreError
from edgeml.fleet import audit, keyring
from edgeml.fleet.api.schemas import FleetKeyRotated, KeyCreate, KeyOut
from edgeml.fleet.auth import Admin, Viewer
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.rollouts.desired_docs import fleet_signing_key, reissue_all, rotate_fleet_key
from edgeml.fleet.store.models import TrustedKey, utcnow

router = APIRouter(prefix="/v1", tags=["keys"])
KEY_ID = re.compile(r"[0-9a-f]{16}")
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
    fleet_id = fleet_signing_key(ctx.store).key_id
    with ctx.store.session() as session:
        if kid == fleet_id or kid in keyring.retired_key_ids(session):
            raise HTTPException(status_code=400, detail=f"key {kid} is (or was) this fleet's desired-state key; a key "
                                "has one role only: sign bundles with a builder key (edgeml keys generate)")
        if kid in keyring.revoked_keys(session):
            raise HTTPException(status_code=409, detail=f"key {kid} was revoked and cannot be trusted again: "
                                "sign with a new key (edgeml keys generate)")
        row = session.get(TrustedKey, kid)
        if row is None:
            row = TrustedKey(key_id=kid, public_pem=public_key_pem(key).decode(), name=body.name, added_at=utcnow())
            session.add(row)
            # devices learn the new signer with their next desired state (the one naming its bundle)
            audit.record(session, request, caller.name, "key.trust", kid, name=body.name)
        return KeyOut(key_id=row.key_id, name=row.name, added_at=row.added_at)


@router.get("/keys", response_model=list[KeyOut])
def list_keys(caller: Viewer, ctx: Ctx) -> list[KeyOut]:
    """Every key with its role and status: bundle signers first, then the fleet key and retired ones."""
    fleet = fleet_signing_key(ctx.store)
    with ctx.store.session() as session:
        rows = [KeyOut(key_id=r.key_id, name=r.name, added_at=r.added_at)
                for r in session.scalars(select(TrustedKey).order_by(TrustedKey.added_at))]
        rows += [KeyOut(key_id=k, name=v["name"], status="revoked", changed_at=v["revoked_at"])
                 for k, v in sorted(keyring.revoked_keys(session).items())]
        rows.append(KeyOut(key_id=fleet.key_id, name="fleet", role="fleet"))
        rows += [KeyOut(key_id=r["key_id"], name="fleet", role="fleet", status="retired", changed_at=r["retired_at"])
                 for r in reversed(keyring.retired_keys(session))]
        return rows


@router.delete("/keys/{key_id}", response_model=KeyOut)
def untrust_key(key_id: str, request: Request, caller: Admin, ctx: Ctx) -> KeyOut:
    """Stop accepting uploads signed by this key; devices drop it from their fleet-managed signers with their
    next desired state (not revoked: it may be trusted again)."""
    with ctx.store.session() as session:
        row = _signer(session, key_id)
        session.delete(row)
        audit.record(session, request, caller.name, "key.untrust", key_id, name=row.name)
        return KeyOut(key_id=row.key_id, name=row.name, added_at=row.added_at)


@router.post("/keys/{key_id}/revoke", response_model=KeyOut)
def revoke_key(key_id: str, request: Request, caller: Admin, ctx: Ctx) -> KeyOut:
    """Revoke a bundle signer fleet-wide: refused on upload here, and every device is sent a new desired
    state telling it to refuse bundles signed only by this key (also ones already installed, at next load)."""
    if not KEY_ID.fullmatch(key_id):
        raise HTTPException(status_code=400, detail=f"'{key_id}' is not a key id (16 hex digits, see edgeml-fleet "
                            "keys list or edgeml keys list)")
    fleet = fleet_signing_key(ctx.store)
    with ctx.store.session() as session:
        if key_id == fleet.key_id or key_id in keyring.retired_key_ids(session):
            raise HTTPException(status_code=400, detail=f"key {key_id} is a fleet key, not a bundle signer: "
                                "rotate it with edgeml-fleet keys rotate-fleet")
        # a key untrusted earlier (no row any more) can still be revoked: it may sit in device configs
        row = session.get(TrustedKey, key_id)
        name = row.name if row is not None else "(untrusted earlier)"
        keyring.revoke(session, key_id, name, row.public_pem if row is not None else "")
        if row is not None:
            session.delete(row)
            session.flush()
        reissued = reissue_all(session, fleet)
        audit.record(session, request, caller.name, "key.revoke", key_id, name=name, reissued=reissued)
        return KeyOut(key_id=key_id, name=name, status="revoked", changed_at=utcnow().isoformat())


@router.post("/keys/fleet/rotate", response_model=FleetKeyRotated)
def rotate_key(request: Request, caller: Admin, ctx: Ctx) -> FleetKeyRotated:
    """A new fleet key, vouched for by the current one; devices move over with their next desired state."""
    fleet_signing_key(ctx.store)    # make sure there is one to rotate
    old, new, reissued = rotate_fleet_key(ctx.store)
    with ctx.store.session() as session:
        audit.record(session, request, caller.name, "key.rotate_fleet", new.key_id, previous=old.key_id,
                     reissued=reissued)
    return FleetKeyRotated(previous_key_id=old.key_id, key_id=new.key_id, reissued=reissued)


def _signer(session: Session, key_id: str) -> TrustedKey:
    row = session.get(TrustedKey, key_id)
    if row is None:
        raise HTTPException(status_code=404, detail=f"no trusted bundle signer with id '{key_id}' "
                            "(see edgeml-fleet keys list)")
    return row
