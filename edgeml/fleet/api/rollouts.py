"""Rollouts: create (Deployer), list/show (Viewer), pause/resume/abort (Deployer).

The controller in the server does the work, in its own thread; these routes only record the operator's
intent (one row, whatever the fleet's size), in the same transaction as the audit entry and a wake-up
note, then ring the controller of this process (another process's controller reads the note).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeml.errors import ConfigError, RolloutError
from edgeml.fleet import audit, keyring
from edgeml.fleet.api.bundles import find_bundle
from edgeml.fleet.auth import Deployer, Viewer
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.rollouts import service, wakeups
from edgeml.fleet.rollouts.gates import Gates
from edgeml.fleet.rollouts.health import TelemetryHealth
from edgeml.fleet.rollouts.plan import Selector
from edgeml.fleet.store.models import Bundle, Rollout, TrustedKey

router = APIRouter(prefix="/v1", tags=["rollouts"])
Ctx = Annotated[FleetContext, Depends(get_context)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class RolloutCreate(BaseModel):
    bundle: str = Field(min_length=1, max_length=300, description="name@version or the bundle's sha256 id")
    group: str | None = Field(default=None, min_length=1, max_length=100)
    tag: str | None = Field(default=None, min_length=1, max_length=64)
    waves: list[Annotated[int, Field(ge=1, le=100)]] = Field(default=[1, 10, 50, 100], min_length=1, max_length=20)
    max_error_rate: Fraction | None = 0.05
    max_latency_regression: Annotated[float, Field(ge=0, le=100)] | None = 0.5
    min_shadow_agreement: Fraction | None = None
    max_drift: Annotated[float, Field(ge=0, le=100)] | None = None
    min_requests: int = Field(default=0, ge=0, le=10_000_000)
    min_reporting: Fraction = Field(default=0.5, description="share of a wave's installed devices that must send "
                                    "telemetry of the new version before it is judged (never fewer than one)")
    observe_s: float = Field(default=600, ge=0, le=30 * 86400)
    wave_timeout_s: float = Field(default=1800, ge=1, le=30 * 86400)
    on_failure: Literal["pause", "abort"] = "pause"
    probation_s: float | None = Field(default=None, ge=0, le=86400,
                                      description="the agents' probation time (default: each agent's own setting)")


class RolloutAbort(BaseModel):
    reason: str = Field(default="aborted by an operator", min_length=1, max_length=500)


class RolloutOut(BaseModel):
    id: str
    bundle: str
    bundle_id: str
    state: str
    selector: dict[str, str]
    wave: int
    waves: int
    devices: int
    counts: dict[str, int]
    reason: str | None
    created_at: datetime
    created_by: str
    updated_at: datetime | None


class RolloutStatus(RolloutOut):
    gates: dict[str, Any]
    observe_s: float
    wave_timeout_s: float
    on_failure: str
    probation: dict[str, Any]
    wave_started_at: datetime | None
    observe_started_at: datetime | None
    wave_list: list[dict[str, Any]]
    live: dict[str, Any] | None
    device_list: list[dict[str, Any]]
    device_list_total: int = Field(description="members in all; device_list holds the first `devices` of them")
    decisions: list[dict[str, Any]]


def _not_found(exc: LookupError) -> HTTPException:
    return HTTPException(status_code=404, detail=str(exc.args[0]))


@router.post("/rollouts", response_model=RolloutOut, status_code=201)
def create_rollout(body: RolloutCreate, request: Request, caller: Deployer, ctx: Ctx,
                   after: BackgroundTasks) -> RolloutOut:
    gates = Gates(max_error_rate=body.max_error_rate, max_latency_regression=body.max_latency_regression,
                  min_shadow_agreement=body.min_shadow_agreement, max_drift=body.max_drift,
                  min_requests=body.min_requests, min_reporting=body.min_reporting)
    spec = service.RolloutSpec(selector=Selector(group=body.group, tag=body.tag), waves=body.waves, gates=gates,
                               observe_s=body.observe_s, wave_timeout_s=body.wave_timeout_s, on_failure=body.on_failure,
                               probation={"seconds": body.probation_s} if body.probation_s is not None else None)
    with ctx.store.session() as session:
        bundle = find_bundle(session, body.bundle)
        _signer_still_trusted(session, bundle)
        try:
            row, planned = service.create(session, bundle, spec, caller.name)
        except ConfigError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        except RolloutError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        audit.record(session, request, caller.name, "rollout.create", row.id, bundle=f"{row.name}@{row.version}",
                     bundle_id=row.bundle_id, selector=row.selector, waves=row.waves, gates=row.gates,
                     observe_s=row.observe_s, wave_timeout_s=row.wave_timeout_s, on_failure=row.on_failure)
        session.flush()
        out = RolloutOut(**service.summary(row, session, planned=planned))
    after.add_task(wakeups.ring, ctx.store)   # once the answer is sent: the fan-out never delays it
    return out


def _signer_still_trusted(session: Session, bundle: Bundle) -> None:
    """Devices accept only bundles whose signer the fleet lists: a rollout they would all refuse is refused
    here."""
    if bundle.key_id in keyring.revoked_keys(session):
        raise HTTPException(status_code=409, detail=f"{bundle.name}@{bundle.version} is signed by revoked key "
                            f"{bundle.key_id}: devices refuse it; sign the model with a trusted key and upload "
                            "it again")
    if session.get(TrustedKey, bundle.key_id) is None:
        raise HTTPException(status_code=409, detail=f"{bundle.name}@{bundle.version} is signed by key "
                            f"{bundle.key_id}, which this fleet no longer trusts: trust it again "
                            "(edgeml-fleet keys trust) or re-sign")


@router.get("/rollouts", response_model=list[RolloutOut])
def list_rollouts(caller: Viewer, ctx: Ctx, state: str | None = None) -> list[RolloutOut]:
    query = select(Rollout).order_by(Rollout.created_at.desc())
    if state is not None:
        query = query.where(Rollout.state == state)
    with ctx.store.session() as session:
        return [RolloutOut(**service.summary(r, session)) for r in session.scalars(query)]


@router.get("/rollouts/{rollout_id}", response_model=RolloutStatus)
def show_rollout(rollout_id: str, caller: Viewer, ctx: Ctx,
                 devices: Annotated[int, Query(ge=0, le=100_000, description="members to list (by wave, then id)")]
                 = service.DEVICE_LIST_LIMIT) -> RolloutStatus:
    with ctx.store.session() as session:
        row = session.get(Rollout, rollout_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no rollout '{rollout_id}' (see 'edgeml-fleet rollout list')")
        return RolloutStatus(**service.status(row, session, TelemetryHealth(), device_limit=devices))


def _change(ctx: FleetContext, request: Request, caller: str, rollout_id: str, action: str,
            **kwargs: str) -> RolloutOut:
    operations: dict[str, Callable[..., Rollout]] = {
        "pause": service.pause, "resume": service.resume, "abort": service.abort}
    with ctx.store.session() as session:
        try:
            row = operations[action](session, rollout_id, **kwargs)
        except LookupError as exc:
            raise _not_found(exc) from exc
        except RolloutError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        audit.record(session, request, caller, f"rollout.{action}", row.id, **kwargs)
        out = RolloutOut(**service.summary(row, session))
    wakeups.ring(ctx.store)
    return out


@router.post("/rollouts/{rollout_id}/pause", response_model=RolloutOut)
def pause_rollout(rollout_id: str, request: Request, caller: Deployer, ctx: Ctx) -> RolloutOut:
    return _change(ctx, request, caller.name, rollout_id, "pause")


@router.post("/rollouts/{rollout_id}/resume", response_model=RolloutOut)
def resume_rollout(rollout_id: str, request: Request, caller: Deployer, ctx: Ctx) -> RolloutOut:
    return _change(ctx, request, caller.name, rollout_id, "resume")


@router.post("/rollouts/{rollout_id}/abort", response_model=RolloutOut)
def abort_rollout(rollout_id: str, body: RolloutAbort, request: Request, caller: Deployer, ctx: Ctx) -> RolloutOut:
    return _change(ctx, request, caller.name, rollout_id, "abort", reason=body.reason)
