"""``GET /v1/devices/me/desired``: the calling device's current signed desired state, for agents that
poll (sites where MQTT is blocked). 200 with the exact wire bytes the MQTT topic carries, 204 when the
fleet has asked nothing of this device yet."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from edgeml.fleet.auth import DeviceCaller
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.store.models import DesiredDocument

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
