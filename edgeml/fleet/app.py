"""Build the FastAPI app from a :class:`FleetContext`: one router per area, mounted here.

Later areas (telemetry, rollouts, desired state, dashboard) add a router module and one line below.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.exc import DataError

from edgeml import __version__ as edgeml_version
from edgeml.fleet.api.limits import RequestLimits, RequestLimitsMiddleware
from edgeml.fleet.context import FleetContext


class ErrorDetail(BaseModel):
    detail: str


# Documented on every route so clients (and the schema-driven tests) know each error's shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "the request is well-formed but unusable (e.g. an untrusted bundle)"},
    401: {"model": ErrorDetail, "description": "missing, wrong, expired or revoked token"},
    403: {"model": ErrorDetail, "description": "the token's role is not enough"},
    404: {"model": ErrorDetail, "description": "no such object"},
    409: {"model": ErrorDetail, "description": "conflicts with the current state"},
    413: {"model": ErrorDetail, "description": "the body is over this endpoint's size limit"},
}


def create_app(ctx: FleetContext, limits: RequestLimits | None = None) -> FastAPI:
    from edgeml.fleet import dashboard
    from edgeml.fleet.api import (
        audit_log,
        broker,
        bundles,
        captures,
        desired,
        devices,
        keys,
        meta,
        rollouts,
        telemetry,
        tokens,
    )

    # openapi_url=None: the document is served by meta.router behind a token; no /docs UI because it
    # loads its scripts from a CDN, which an air-gapped site cannot reach.
    app = FastAPI(title="edgeml fleet", version=edgeml_version, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.fleet = ctx
    # Outside every route: bodies are counted and checked before a route (or FastAPI) parses them.
    app.add_middleware(RequestLimitsMiddleware, limits=limits or RequestLimits())

    @app.exception_handler(DataError)
    def unstorable_value(request: Request, exc: DataError) -> JSONResponse:
        # e.g. a NUL byte in a string (PostgreSQL refuses it): the caller's data, not a server fault
        return JSONResponse(status_code=400, content={"detail": "a value in the request cannot be stored "
                                                                 f"(text with a NUL byte?): {exc.orig}"})

    app.state.routers = [area.router for area in (meta, tokens, audit_log, keys, bundles, devices, broker, telemetry)]
    app.state.routers.append(telemetry.metrics_router)
    app.state.routers += [desired.router, rollouts.router]
    app.state.routers.append(captures.router)
    for router in app.state.routers:
        app.include_router(router, responses=ERROR_RESPONSES)
    dashboard.mount(app)  # static files only: every data call the page makes goes through the guarded routes
    return app


def api_routes(app: FastAPI) -> list[APIRoute]:
    """Every route the app serves (the auth test walks this list, so no new route can escape it)."""
    return [route for router in app.state.routers for route in router.routes if isinstance(route, APIRoute)]
