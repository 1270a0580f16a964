"""Request limits, enforced before any route reads or parses a body.

Every body is counted as it arrives, whatever ``Content-Length`` says (a chunked body has none):

- the bundle upload (``POST /v1/bundles``) streams to disk and may be large, up to ``max_bundle_bytes``
  (``edgeml-fleet serve --max-bundle-bytes``); past that the route's stream raises a 413, and the route
  removes its partial file;
- every other body is JSON and small (``max_json_bytes``): it is read whole here, then checked once for
  what the routes' schemas cannot see — nesting depth, string length, text that cannot be stored or sent
  back (a lone UTF-16 surrogate such as ``"\\ud800"``) — and handed on unchanged.

Refusals: 413 with ``{"detail": "..."}``; 422 in FastAPI's validation-error shape (``detail`` a list of
``{loc, msg, type}``), so a client handles these as it handles any other invalid field. Without these
checks a device could store a 50 MB heartbeat (then sent to every viewer of ``GET /v1/devices``), or a
900-deep or surrogate-holding one that made every later device listing a 500.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_ROUTE = ("POST", "/v1/bundles")
CAPTURE_UPLOAD = ("PUT", "/v1/captures/")   # + a capture id: a device's captured sample (.npz), streamed


@dataclass(frozen=True)
class RequestLimits:
    max_json_bytes: int = 64 << 10       # any request but a bundle upload: tokens, devices, heartbeats, rollouts
    max_bundle_bytes: int = 2 << 30      # a bundle upload (--max-bundle-bytes)
    max_capture_bytes: int = 16 << 20    # one captured sample a device uploads (PUT /v1/captures/{id})
    max_json_depth: int = 32             # nested objects/arrays in a JSON body
    max_string_chars: int = 16 << 10     # any string in a JSON body, keys included (a PEM key fits)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, what: str) -> None:
        # Connection: close makes the server hang up after the answer instead of reading (and discarding)
        # the rest of the body, so the client stops sending too.
        super().__init__(status_code=413, detail=f"the request body is over the {limit}-byte limit for {what}",
                         headers={"Connection": "close"})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _json_content(scope: Scope) -> bool:
    """FastAPI parses a body as JSON when it says so, or says nothing."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media.endswith(b"/json") or media.endswith(b"+json")
    return True


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, limits: RequestLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = (scope["method"], scope["path"].rstrip("/")) == UPLOAD_ROUTE
        limit = self.limits.max_bundle_bytes if upload else self.limits.max_json_bytes
        what = ("a bundle upload (the server's operator can raise it: 'edgeml-fleet serve --max-bundle-bytes')"
                if upload else f"{scope['method']} {scope['path']}: send only the documented fields")
        if scope["method"] == CAPTURE_UPLOAD[0] and scope["path"].startswith(CAPTURE_UPLOAD[1]):
            upload, limit = True, self.limits.max_capture_bytes
            what = "a captured sample: lower the capture budget or keep inputs only"
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _answer(scope, receive, send, BodyTooLarge(limit, what))
            return
        if upload:
            await self.app(scope, _counting(receive, limit, what), send)
            return
        try:
            body, rest = await _read_all(receive, limit, what)
        except BodyTooLarge as exc:
            await _answer(scope, receive, send, exc)
            return
        problem = check_json(body, self.limits) if body and _json_content(scope) else None
        if problem is not None:
            loc, msg, kind = problem
            await JSONResponse({"detail": [{"loc": ["body", *loc], "msg": msg, "type": kind}]},
                               status_code=422)(scope, receive, send)
            return
        await self.app(scope, _replay(body, rest), send)


async def _answer(scope: Scope, receive: Receive, send: Send, exc: HTTPException) -> None:
    await JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)(scope, receive, send)


def _counting(receive: Receive, limit: int, what: str) -> Receive:
    """``receive`` that raises a 413 once the body passes ``limit``: the route stops there (its partial
    file is removed by its own clean-up) and the rest of the body is never read."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit, what)
        return message

    return counted


async def _read_all(receive: Receive, limit: int, what: str) -> tuple[bytes, Receive]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":   # the client left: let the route see it
            return b"".join(chunks), _repeat(message)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, what)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), receive


def _repeat(message: Message) -> Receive:
    async def again() -> Message:
        return message

    return again


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()   # after the body: wait for a disconnect as usual
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def check_json(body: bytes, limits: RequestLimits) -> tuple[list[str | int], str, str] | None:
    """(where, what is wrong, error type) for a body that must not reach a route, or None.

    A body that is not JSON at all is left to the route, which answers it with its usual 422.
    """
    try:
        doc = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotFinite as exc:
        return [], f"{exc} is not a JSON number: send a finite number or null", "json_not_finite"
    except RecursionError:
        return [], f"the JSON is nested deeper than {limits.max_json_depth} levels", "json_too_deep"
    except ValueError:   # not JSON (or a number of thousands of digits): the route's parser says so
        return None
    # Walked with a stack, not recursion: the depth is what is being checked.
    stack: list[tuple[Any, list[str | int]]] = [(doc, [])]
    while stack:
        value, loc = stack.pop()
        if len(loc) > limits.max_json_depth:
            return loc[:3], f"the JSON is nested deeper than {limits.max_json_depth} levels", "json_too_deep"
        if isinstance(value, str):
            problem = _check_string(value, limits)
            if problem is not None:
                return loc, problem[0], problem[1]
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = _check_string(key, limits)
                if problem is not None:
                    return loc, f"a key: {problem[0]}", problem[1]
                stack.append((item, [*loc, key]))
        elif isinstance(value, list):
            stack.extend((item, [*loc, i]) for i, item in enumerate(value))
    return None


class _NotFinite(ValueError):
    """NaN or ±Infinity: Python's parser accepts them, but the answer that echoes them back would be
    invalid JSON (and PostgreSQL refuses to store them)."""


def _refuse_constant(token: str) -> float:
    raise _NotFinite(token)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):   # e.g. 1e999
        raise _NotFinite(token[:40])
    return value


def _check_string(text: str, limits: RequestLimits) -> tuple[str, str] | None:
    if len(text) > limits.max_string_chars:
        return f"the text is {len(text)} characters; at most {limits.max_string_chars} are accepted", "string_too_long"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return ("the text holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not a "
                    "character: send valid Unicode"), "string_unicode"
    return None
