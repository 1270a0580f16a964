"""Bundles: upload (signature checked against the fleet's trusted keys), list, show, ranged download,
delta download, delete.

A bundle's id is the sha256 of its bytes, so uploading the same file twice stores it once. A bundle is
addressed by that id or by ``name@version``. ``GET /v1/bundles/{ref}/delta?from=<version>`` answers the
binary delta that rebuilds the bundle's tar stream from an older version's (:mod:`edgeml.bundle.delta`),
made on the first request and kept in the artifact store; the headers name the sha256 and size of the
base it expects and of the result it rebuilds (the device checks the result against its signed desired
state, not against these headers).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeml.bundle import verify_bundle
from edgeml.bundle.delta import DeltaError
from edgeml.bundle.manifest import parse_semver
from edgeml.errors import BundleError, FleetError
from edgeml.fleet import audit
from edgeml.fleet.api.keys import trust_store
from edgeml.fleet.api.schemas import BundleDetail, BundleOut
from edgeml.fleet.auth import AnyCaller, Deployer, Principal, Viewer
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.store.models import Bundle, Rollout, utcnow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["bundles"])
Ctx = Annotated[FleetContext, Depends(get_context)]

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the signed .edgepkg file",
    }
}
RANGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    206: {"description": "the requested byte range",
          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    416: {"description": "the range lies outside the file", "content": {"text/plain": {"schema": {"type": "string"}}}},
    400: {"description": "malformed Range header", "content": {"text/plain": {"schema": {"type": "string"}}}},
}


def bundle_out(row: Bundle) -> BundleOut:
    return BundleOut(id=row.id, name=row.name, version=row.version, target=row.target, runtime=row.runtime,
                     precision=row.precision, key_id=row.key_id, size=row.size, uploaded_at=row.uploaded_at,
                     uploaded_by=row.uploaded_by)


def find_bundle(session: Session, ref: str) -> Bundle:
    if "\x00" in ref:  # no bundle has one, and PostgreSQL refuses NUL in text parameters
        raise HTTPException(status_code=404, detail="no bundle with a NUL byte in its name")
    if "@" in ref:
        name, _, version = ref.partition("@")
        row = session.scalars(select(Bundle).where(Bundle.name == name, Bundle.version == version)).first()
    else:
        row = session.get(Bundle, ref)
    if row is None:
        raise HTTPException(status_code=404, detail=f"no bundle '{ref}' (use a sha256 id or name@version; "
                                                    "see 'edgeml-fleet bundles list')")
    return row


def _register(ctx: FleetContext, tmp: Path, digest: str, size: int, caller: Principal, request: Request,
              response: Response) -> BundleOut:
    try:
        verified = verify_bundle(tmp, trust_store(ctx))
    except BundleError as exc:
        ctx.artifacts.discard(tmp)
        raise HTTPException(status_code=400, detail=f"bundle refused: {exc}") from exc
    m = verified.manifest
    with ctx.store.session() as session:
        existing = session.get(Bundle, digest)
        if existing is not None:
            ctx.artifacts.commit(tmp, digest)  # same bytes: keep one copy (restores it if it went missing)
            response.status_code = 200
            return bundle_out(existing)
        clash = session.scalars(select(Bundle).where(Bundle.name == m.name, Bundle.version == m.version)).first()
        if clash is not None:
            ctx.artifacts.discard(tmp)
            raise HTTPException(status_code=409, detail=(
                f"{m.name}@{m.version} already exists with different content (id {clash.id}); "
                "bump the version in the build"))
        row = Bundle(id=digest, name=m.name, version=m.version, target=m.target_id, runtime=m.runtime,
                     precision=m.precision, key_id=verified.key_id, size=size, manifest=m.raw,
                     uploaded_at=utcnow(), uploaded_by=caller.name)
        session.add(row)
        audit.record(session, request, caller.name, "bundle.upload", digest, name=m.name, version=m.version,
                     size=size)
        ctx.artifacts.commit(tmp, digest)
        previous = _newest_older(session, m.name, m.version)
    ctx.artifacts.tar_info(digest)   # signed into every desired state for this bundle: compute it now
    if previous is not None:         # most devices will come from there: have that delta ready
        threading.Thread(target=_premake_delta, args=(ctx, previous, digest), daemon=True,
                         name="edgeml-delta").start()
    response.status_code = 201
    return bundle_out(row)


def _newest_older(session: Session, name: str, version: str) -> str | None:
    """The id of the newest version of ``name`` older than ``version``, if any."""
    older = [(parse_semver(v), i) for i, v in session.execute(select(Bundle.id, Bundle.version)
                                                              .where(Bundle.name == name))
             if parse_semver(v) < parse_semver(version)]
    return max(older)[1] if older else None


def _premake_delta(ctx: FleetContext, base: str, target: str) -> None:
    try:
        ctx.artifacts.delta(base, target)
    except (DeltaError, FleetError, OSError) as exc:   # devices will get the full bundle: say why, once
        log.warning("no delta from bundle %s to %s: %s", base, target, exc)


@router.post("/bundles", response_model=BundleOut, status_code=201, openapi_extra=UPLOAD_BODY,
             responses={200: {"model": BundleOut, "description": "the same bytes were already uploaded"}})
async def upload_bundle(request: Request, response: Response, caller: Deployer, ctx: Ctx) -> BundleOut:
    chunks_written = ctx.artifacts.open_upload()
    try:
        async for chunk in request.stream():
            chunks_written.write(chunk)
    except BaseException:
        chunks_written.abort()
        raise
    tmp, digest, size = chunks_written.finish()
    if size == 0:
        ctx.artifacts.discard(tmp)
        raise HTTPException(status_code=400, detail="empty upload: send the .edgepkg file as the request body")
    return await run_in_threadpool(_register, ctx, tmp, digest, size, caller, request, response)


@router.get("/bundles", response_model=list[BundleOut])
def list_bundles(caller: Viewer, ctx: Ctx, name: str | None = None) -> list[BundleOut]:
    query = select(Bundle).order_by(Bundle.name, Bundle.uploaded_at)
    if name is not None:
        query = query.where(Bundle.name == name)
    with ctx.store.session() as session:
        return [bundle_out(r) for r in session.scalars(query)]


@router.get("/bundles/{ref}", response_model=BundleDetail)
def show_bundle(ref: str, caller: Viewer, ctx: Ctx) -> BundleDetail:
    with ctx.store.session() as session:
        row = find_bundle(session, ref)
        rollouts = list(session.scalars(select(Rollout.id).where(Rollout.bundle_id == row.id)))
        fidelity, benchmark = row.manifest.get("fidelity"), row.manifest.get("benchmark")
        return BundleDetail(**bundle_out(row).model_dump(), manifest=row.manifest,
                            fidelity=fidelity if isinstance(fidelity, dict) else None,
                            benchmark=benchmark if isinstance(benchmark, dict) else None,
                            in_use_by_rollouts=rollouts)


@router.get("/bundles/{ref}/download", response_class=FileResponse, responses=RANGE_RESPONSES)
def download_bundle(ref: str, caller: AnyCaller, ctx: Ctx) -> FileResponse:
    with ctx.store.session() as session:
        row = find_bundle(session, ref)
        digest, filename = row.id, f"{row.name}-{row.version}.edgepkg"
    path = ctx.artifacts.path(digest)
    if not path.is_file():
        raise HTTPException(status_code=404,
                            detail=f"the file of bundle {digest} is missing from the artifact store; push it again")
    # FileResponse answers Range requests itself (206 + Content-Range, 416 outside the file) and sends an
    # ETag, so an interrupted download resumes with 'Range: bytes=<have>-' plus 'If-Range: <etag>'.
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


DELTA_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the delta (a zstd frame, the older version's tar stream as its dictionary)",
          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    404: {"description": "no delta: unknown bundle or base version, or a delta would not be smaller than the "
                         "bundle; download the full bundle"},
}


@router.get("/bundles/{ref}/delta", response_class=FileResponse, responses=DELTA_RESPONSES)
def download_delta(ref: str, caller: AnyCaller, ctx: Ctx,
                   base_ref: Annotated[str, Query(alias="from", max_length=200,
                                                  description="the version (or sha256 id) the device runs")]
                   ) -> FileResponse:
    with ctx.store.session() as session:
        target = find_bundle(session, ref)
        base = find_bundle(session, base_ref if len(base_ref) == 64 else f"{target.name}@{base_ref}")
        if base.name != target.name or base.id == target.id:
            raise HTTPException(status_code=404, detail=f"no delta from {base.name}@{base.version} to "
                                                        f"{target.name}@{target.version}")
        base_id, target_id, full_size = base.id, target.id, int(target.size)
        label = f"{target.name}-{base.version}-to-{target.version}.delta"
    try:
        made = ctx.artifacts.delta(base_id, target_id, wait=False)
    except (DeltaError, FleetError) as exc:
        raise HTTPException(status_code=404, detail=f"no delta: {exc}; download the full bundle") from exc
    if made.stat().st_size >= full_size:
        raise HTTPException(status_code=404, detail="no delta: it would not be smaller than the bundle; "
                                                    "download the full bundle")
    base_tar, target_tar = ctx.artifacts.tar_info(base_id), ctx.artifacts.tar_info(target_id)
    assert base_tar is not None and target_tar is not None   # both files were just read to make the delta
    return FileResponse(made, media_type="application/octet-stream", filename=label, headers={
        "X-Edgeml-Delta-Base-Sha256": base_tar.sha256, "X-Edgeml-Delta-Base-Size": str(base_tar.size),
        "X-Edgeml-Delta-Result-Sha256": target_tar.sha256, "X-Edgeml-Delta-Result-Size": str(target_tar.size)})


@router.delete("/bundles/{ref}", response_model=BundleOut)
def delete_bundle(ref: str, request: Request, caller: Deployer, ctx: Ctx) -> BundleOut:
    with ctx.store.session() as session:
        row = find_bundle(session, ref)
        users = list(session.scalars(select(Rollout.id).where(Rollout.bundle_id == row.id)))
        if users:
            raise HTTPException(status_code=409, detail=(
                f"bundle {row.name}@{row.version} is used by rollout(s) {', '.join(users)}; "
                "finish or delete them first"))
        out = bundle_out(row)
        session.delete(row)
        audit.record(session, request, caller.name, "bundle.delete", row.id, name=row.name, version=row.version)
    ctx.artifacts.delete(out.id)
    return out
