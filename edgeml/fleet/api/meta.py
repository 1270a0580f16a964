"""Liveness and the OpenAPI document.

``/healthz`` is the one route without a token: it says only "ok", and load balancers and supervisors
probe it without credentials. The OpenAPI document needs a viewer token like everything else.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from edgeml.fleet.api.schemas import Health
from edgeml.fleet.auth import Viewer

router = APIRouter(tags=["meta"])
PUBLIC_PATHS = frozenset({"/healthz"})


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/openapi.json", include_in_schema=False)
def openapi_document(request: Request, caller: Viewer) -> dict[str, Any]:
    document: dict[str, Any] = request.app.openapi()
    return document
