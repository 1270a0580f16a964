"""Captured samples: devices upload them, people list, download, export and delete them.

- ``PUT /v1/captures/{capture_id}`` (a device's token): the body is the sample's ``.npz`` as the agent
  wrote it (``in/<input>``, ``out/<output>``, ``__meta__``). Idempotent per (device, capture id): the same
  sample sent again answers 200 with the stored row and stores nothing; a new one answers 201. The body
  is streamed to the artifact store (content-addressed) under ``--max-capture-bytes``.
- ``GET /v1/captures?model=&trigger=&since=&device=&limit=&cursor=``: newest first, keyset-paged
  (``next_cursor``); ``since`` is a duration (``30m``, ``12h``, ``1d``) or an ISO time.
- ``GET /v1/captures/{device}/{capture_id}`` (metadata) and ``.../file`` (the ``.npz``).
- ``DELETE /v1/captures?model=&device=&before=``: deletes what matches (at least one filter), audited.
- ``GET``/``PUT /v1/captures-retention``: how long and how many samples per (device, model) are kept;
  enforced on every upload for that pair, changes audited.
"""

from __future__ import annotations

import json
import re
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgeml.capture import TRIGGERS
from edgeml.fleet import audit
from edgeml.fleet.auth import Admin, Deployer, DeviceCaller, Principal, Viewer
from edgeml.fleet.capture_thumbnails import thumbnail
from edgeml.fleet.context import FleetContext, get_context
from edgeml.fleet.store.capture_models import Capture
from edgeml.fleet.store.models import Setting, utcnow

router = APIRouter(prefix="/v1", tags=["captures"])
Ctx = Annotated[FleetContext, Depends(get_context)]

CAPTURE_ID = re.compile(r"^[0-9a-zA-Z_-]{1,64}$")
RETENTION_SETTING = "captures.retention"
MAX_META_CHARS = 16 << 10
MAX_ARRAYS = 64
UPLOAD_BODY = {"requestBody": {"required": True, "description": "the captured sample (.npz, as the agent wrote it)",
                               "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                   "format": "binary"}}}}}


class CaptureOut(BaseModel):
    device: str
    capture_id: str
    model: str
    version: str
    trigger: str
    figures: dict[str, Any]
    tensors: dict[str, Any]
    captured_at: datetime
    received_at: datetime
    size: int


class CapturePage(BaseModel):
    captures: list[CaptureOut]
    next_cursor: str | None


class Retention(BaseModel):
    max_age_days: float = Field(default=30.0, gt=0, le=3650, description="samples older than this are deleted")
    max_per_device_model: int = Field(default=10_000, ge=1, le=10_000_000,
                                      description="beyond this many per (device, model), the oldest are deleted")


class DeleteResult(BaseModel):
    deleted: int


def capture_out(row: Capture) -> CaptureOut:
    return CaptureOut(device=row.device_id, capture_id=row.capture_id, model=row.model, version=row.version,
                      trigger=row.trigger, figures=row.figures, tensors=row.tensors, captured_at=row.captured_at,
                      received_at=row.received_at, size=row.size)


def parse_since(text: str | None) -> datetime | None:
    """``30m``, ``12h``, ``7d``, ``90s`` (that long ago) or an ISO time; None for None."""
    if text is None:
        return None
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if found:
        seconds = float(found[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[found[2]]
        try:
            return datetime.now(UTC) - timedelta(seconds=seconds)
        except OverflowError:   # longer ago than datetime reaches: everything
            return datetime(1970, 1, 1, tzinfo=UTC)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(400, f"since={text!r} is neither a duration (30m, 12h, 1d) nor an ISO time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# -- upload (devices) -------------------------------------------------------------------------------------
def read_sample(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, tensors) of an uploaded sample, or a 400 saying what is wrong. Reads no pickles and no more
    than the headers of the arrays (their shapes and dtypes)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if len(npz.files) > MAX_ARRAYS:
                raise HTTPException(400, f"a captured sample holds at most {MAX_ARRAYS} arrays")
            meta = json.loads(str(npz["__meta__"][()])[:MAX_META_CHARS])
            tensors = {}
            for name in npz.files:
                if name != "__meta__":
                    array = npz[name]
                    tensors[name] = {"dtype": str(array.dtype), "shape": list(array.shape)}
    except HTTPException:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise HTTPException(400, f"not a captured sample (.npz with __meta__): {exc}") from exc
    if not isinstance(meta, dict):
        raise HTTPException(400, "the sample's __meta__ is not a JSON object")
    return meta, tensors


def _check_meta(meta: dict[str, Any], capture_id: str) -> None:
    problems = [f"{key} must be a non-empty string of at most {size} characters"
                for key, size in (("model", 200), ("version", 64), ("trigger", 32))
                if not isinstance(meta.get(key), str) or not 0 < len(meta[key]) <= size]
    if meta.get("id") != capture_id:
        problems.append(f"its __meta__ id {meta.get('id')!r} is not the capture id in the URL ({capture_id})")
    if meta.get("trigger") not in TRIGGERS:
        problems.append(f"trigger must be one of {', '.join(TRIGGERS)}")
    if not isinstance(meta.get("figures", {}), dict) or not isinstance(meta.get("ts", 0), int | float):
        problems.append("figures must be an object and ts a number")
    if problems:
        raise HTTPException(400, "captured sample refused: " + "; ".join(problems))


def _store_sample(ctx: FleetContext, caller: Principal, capture_id: str, tmp: Path, digest: str, size: int,
                  response: Response) -> CaptureOut:
    assert caller.device_id is not None
    try:
        meta, tensors = read_sample(tmp)
        _check_meta(meta, capture_id)
    except HTTPException:
        ctx.artifacts.discard(tmp)
        raise
    with ctx.store.session() as session:
        existing = session.get(Capture, (caller.device_id, capture_id))
        if existing is not None:   # sent again (a retry after a crash or a lost answer): stored once
            ctx.artifacts.discard(tmp)
            response.status_code = 200
            return capture_out(existing)
    ts = float(meta.get("ts", 0)) or utcnow().timestamp()
    row = Capture(device_id=caller.device_id, capture_id=capture_id, model=meta["model"], version=meta["version"],
                  trigger=meta["trigger"], figures=meta.get("figures") or {}, tensors=tensors,
                  captured_at=datetime.fromtimestamp(ts, UTC), received_at=utcnow(), size=size, file_sha256=digest)
    ctx.artifacts.commit(tmp, digest)   # before the row: a row never names a missing file
    try:
        with ctx.store.session() as session:
            session.add(row)
            session.flush()
            out = capture_out(row)
    except IntegrityError:   # the same sample arrived twice at once: the other request stored it
        with ctx.store.session() as session:
            stored = session.get(Capture, (caller.device_id, capture_id))
            assert stored is not None
            response.status_code = 200
            return capture_out(stored)
    _apply_retention(ctx, caller.device_id, out.model)
    response.status_code = 201
    return out


@router.put("/captures/{capture_id}", response_model=CaptureOut, status_code=201, openapi_extra=UPLOAD_BODY,
            responses={200: {"model": CaptureOut, "description": "this sample was already stored"}})
async def upload_capture(capture_id: str, request: Request, response: Response, caller: DeviceCaller,
                         ctx: Ctx) -> CaptureOut:
    if not CAPTURE_ID.match(capture_id):
        raise HTTPException(400, "a capture id is 1-64 letters, digits, '-' or '_'")
    upload = ctx.artifacts.open_upload()
    try:
        async for chunk in request.stream():
            upload.write(chunk)
    except BaseException:
        upload.abort()
        raise
    tmp, digest, size = upload.finish()
    if size == 0:
        ctx.artifacts.discard(tmp)
        raise HTTPException(400, "empty upload: send the captured sample's .npz as the request body")
    return await run_in_threadpool(_store_sample, ctx, caller, capture_id, tmp, digest, size, response)


# -- retention ------------------------------------------------------------------------------------------------
def load_retention(session: Session) -> Retention:
    row = session.get(Setting, RETENTION_SETTING)
    return Retention.model_validate_json(row.value) if row is not None else Retention()


def _apply_retention(ctx: FleetContext, device_id: str, model: str) -> None:
    with ctx.store.session() as session:
        limits = load_retention(session)
        pair = (Capture.device_id == device_id, Capture.model == model)
        cutoff = utcnow() - timedelta(days=limits.max_age_days)
        doomed = list(session.scalars(select(Capture).where(*pair, Capture.received_at < cutoff)))
        count = session.scalar(select(func.count()).select_from(Capture).where(*pair)) or 0
        excess = count - len(doomed) - limits.max_per_device_model
        if excess > 0:
            doomed += list(session.scalars(select(Capture).where(*pair, Capture.received_at >= cutoff)
                                           .order_by(Capture.received_at, Capture.capture_id).limit(excess)))
        digests = _delete_rows(session, doomed)
    _drop_unreferenced(ctx, digests)


def _delete_rows(session: Session, rows: list[Capture]) -> set[str]:
    for row in rows:
        session.delete(row)
    session.flush()
    return {row.file_sha256 for row in rows}


def _drop_unreferenced(ctx: FleetContext, digests: set[str]) -> None:
    """Delete the files no capture names any more (two devices may have sent the same bytes)."""
    if not digests:
        return
    with ctx.store.session() as session:
        used = set(session.scalars(select(Capture.file_sha256).where(Capture.file_sha256.in_(digests))))
    for digest in digests - used:
        ctx.artifacts.delete(digest)


@router.get("/captures-retention", response_model=Retention)
def get_retention(caller: Viewer, ctx: Ctx) -> Retention:
    with ctx.store.session() as session:
        return load_retention(session)


@router.put("/captures-retention", response_model=Retention)
def set_retention(limits: Retention, request: Request, caller: Admin, ctx: Ctx) -> Retention:
    with ctx.store.session() as session:
        row = session.get(Setting, RETENTION_SETTING)
        if row is None:
            session.add(Setting(key=RETENTION_SETTING, value=limits.model_dump_json()))
        else:
            row.value = limits.model_dump_json()
        audit.record(session, request, caller.name, "captures.retention", "captures", **limits.model_dump())
    return limits


# -- queries (people) -------------------------------------------------------------------------------------------
@router.get("/captures", response_model=CapturePage)
def list_captures(caller: Viewer, ctx: Ctx,
                  model: Annotated[str | None, Query(max_length=200)] = None,
                  trigger: Annotated[str | None, Query(max_length=32)] = None,
                  since: Annotated[str | None, Query(max_length=64, description="30m, 12h, 1d or ISO")] = None,
                  device: Annotated[str | None, Query(max_length=32)] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  cursor: Annotated[str | None, Query(max_length=200)] = None) -> CapturePage:
    query = select(Capture)
    for column, value in ((Capture.model, model), (Capture.trigger, trigger), (Capture.device_id, device)):
        if value is not None:
            query = query.where(column == value)
    when = parse_since(since)
    if when is not None:
        query = query.where(Capture.received_at >= when)
    if cursor is not None:
        query = query.where(tuple_(Capture.received_at, Capture.device_id, Capture.capture_id) < _cursor(cursor))
    query = query.order_by(Capture.received_at.desc(), Capture.device_id.desc(), Capture.capture_id.desc())
    with ctx.store.session() as session:
        rows = list(session.scalars(query.limit(limit + 1)))
        page = [capture_out(r) for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = f"{last.received_at.isoformat()}~{last.device_id}~{last.capture_id}" if last else None
    return CapturePage(captures=page, next_cursor=next_cursor)


def _cursor(text: str) -> tuple[datetime, str, str]:
    try:
        when, device, capture_id = text.split("~")
        parsed = datetime.fromisoformat(when)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)), device, capture_id
    except ValueError:
        raise HTTPException(400, "cursor must be a next_cursor value from a previous page") from None


def _find(session: Session, device: str, capture_id: str) -> Capture:
    row = session.get(Capture, (device, capture_id))
    if row is None:
        raise HTTPException(404, f"no captured sample {capture_id} from device {device}")
    return row


@router.get("/captures/{device}/{capture_id}", response_model=CaptureOut)
def show_capture(device: str, capture_id: str, caller: Viewer, ctx: Ctx) -> CaptureOut:
    with ctx.store.session() as session:
        return capture_out(_find(session, device, capture_id))


@router.get("/captures/{device}/{capture_id}/file", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                  "format": "binary"}}}}})
def capture_file(device: str, capture_id: str, caller: Viewer, ctx: Ctx) -> FileResponse:
    with ctx.store.session() as session:
        digest = _find(session, device, capture_id).file_sha256
    path = ctx.artifacts.path(digest)
    if not path.is_file():
        raise HTTPException(404, f"the file of captured sample {capture_id} is missing from the artifact store")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{device}-{capture_id}.npz")


@router.get("/captures/{device}/{capture_id}/thumbnail", response_class=Response,
            responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}})
def capture_thumbnail(device: str, capture_id: str, caller: Viewer, ctx: Ctx) -> Response:
    """A small PNG of the sample's first image-like input (404 when it has none)."""
    with ctx.store.session() as session:
        digest = _find(session, device, capture_id).file_sha256
    path = ctx.artifacts.path(digest)
    image = thumbnail(path) if path.is_file() else None
    if image is None:
        raise HTTPException(404, f"captured sample {capture_id} holds no image input")
    return Response(image, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.delete("/captures", response_model=DeleteResult)
def delete_captures(request: Request, caller: Deployer, ctx: Ctx,
                    model: Annotated[str | None, Query(max_length=200)] = None,
                    device: Annotated[str | None, Query(max_length=32)] = None,
                    before: Annotated[str | None, Query(max_length=64, description="ISO time")] = None
                    ) -> DeleteResult:
    if model is None and device is None and before is None:
        raise HTTPException(400, "name what to delete: model=, device= and/or before=")
    query = select(Capture)
    if model is not None:
        query = query.where(Capture.model == model)
    if device is not None:
        query = query.where(Capture.device_id == device)
    if before is not None:
        cutoff = parse_since(before)
        assert cutoff is not None
        query = query.where(Capture.received_at < cutoff)
    with ctx.store.session() as session:
        rows = list(session.scalars(query))
        digests = _delete_rows(session, rows)
        audit.record(session, request, caller.name, "captures.delete", model or device or "captures",
                     model=model, device=device, before=before, deleted=len(rows))
    _drop_unreferenced(ctx, digests)
    return DeleteResult(deleted=len(rows))


