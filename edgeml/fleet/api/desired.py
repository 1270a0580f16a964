"""``GET /v1/devices/me/desired``: the calling device's current signed desired state, for agents that
poll (sites where MQTT is blocked). 200 with the exact wire bytes the MQTT topic carries, 204 when the
fleet has asked nothing of this device yet. ``GET /v1/devices/me/keys``: the key ids per role."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from sqlalchemy import select

from edgeml.fleet.api.schemas import DeviceKeys
from edgeml.fleet.auth import DeviceCaller
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.store.models import DesiredDocument, TrustedKey

router = APIRouter(prefix="/v1", tags=["desired state"])
Ctx = Annotated[FleetContext, Depends(get_context)]

WIRE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "the signed desired-state document (edgeml.desired wire format)",
          "content": {"application/json": {"schema": {"type": "object"}}}},
    204: {"description": "no desired state for this device yet"},
}


@router.get("/devices/me/desired", response_class=Response, responses=WIRE_RESPONSES)
def my_desired_state(caller: DeviceCaller, ctx: Ctx) -> Response:
    assert caller.device_id is not None
    with ctx.store.session() as session:
        row = session.get(DesiredDocument, caller.device_id)
        if row is None:
            return Response(status_code=204)
        return Response(content=row.wire.encode(), media_type="application/json")


@router.get("/devices/me/keys", response_model=DeviceKeys)
def my_keys(caller: DeviceCaller, ctx: Ctx) -> DeviceKeys:
    """The key ids in each role, for agents that split an old single trusted directory (they classify
    the keys they already hold by it; they never trust a new key from this answer)."""
    from edgeml.fleet import keyring
    from edgeml.fleet.rollouts.desired_docs import fleet_signing_key

    fleet = fleet_signing_key(ctx.store).key_id
    with ctx.store.session() as session:
        return DeviceKeys(fleet=[fleet, *sorted(keyring.retired_key_ids(session))],
                          signers=sorted(session.scalars(select(TrustedKey.key_id))),
                          revoked=sorted(keyring.revoked_keys(session)))
