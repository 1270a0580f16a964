"""Mosquitto's password and ACL files, generated from the store (``edgeml-fleet broker-config``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from edgeml.fleet.api.schemas import MosquittoFiles as MosquittoFilesOut
from edgeml.fleet.auth import Admin
from edgeml.fleet.broker.accounts import StoreAccounts
from edgeml.fleet.broker.mosquitto import mosquitto_conf, mosquitto_files
from edgeml.fleet.context import FleetContext, get_context

router = APIRouter(prefix="/v1", tags=["broker"])
Ctx = Annotated[FleetContext, Depends(get_context)]


@router.get("/broker/mosquitto", response_model=MosquittoFilesOut)
def mosquitto_config(caller: Admin, ctx: Ctx) -> MosquittoFilesOut:
    files = mosquitto_files(StoreAccounts(ctx.store).password_lines())
    return MosquittoFilesOut(password_file=files.password_file, acl_file=files.acl_file,
                             config=mosquitto_conf("passwords", "acl"))
