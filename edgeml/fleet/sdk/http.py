"""One HTTP exchange with the fleet server: the API's status codes become :mod:`edgeml.errors` classes,
and reads that fail for a reason that may pass (5xx, 429, the network) are retried with backoff.

Only idempotent reads (GET) are retried: a POST that timed out may have been applied, and sending it
again could create a second rollout. Errors are classified here, where the answer is read (mender's rule):

    401/403 → AuthError          404 → NotFoundError          409 → ConflictError
    400/413/422 → InvalidRequestError (the server's message, field by field)
    429, 5xx, network → TransientFleetError (after the retries, for GETs)

``transport`` is the seam for unit tests (an ``httpx.MockTransport``); everything else talks to a real server.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgeml.errors import (
    AuthError,
    ConflictError,
    FleetError,
    InvalidRequestError,
    NotFoundError,
    TransientFleetError,
)
from edgeml.fleet.sdk.config import ClientConfig

RETRIED_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Retry:
    """How reads are retried: ``attempts`` in all, waiting ``first_s`` × 2ⁿ (at most ``max_s``) in between,
    or what the server's Retry-After asks (at most ``max_s``)."""

    attempts: int = 4
    first_s: float = 0.5
    max_s: float = 10.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_s)
            except ValueError:
                pass   # an HTTP date: rare from this server; fall back to our own backoff
        return min(self.first_s * (2 ** attempt), self.max_s)


def detail(response: httpx.Response) -> str:
    """The server's message: FastAPI's ``detail`` (a string, or a list of field errors), else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    found = body.get("detail") if isinstance(body, dict) else None
    if isinstance(found, str):
        return found
    if isinstance(found, list):   # 422: [{"loc": ["body", "waves", 0], "msg": "..."}, ...]
        return "; ".join(_field_error(e) for e in found)
    return json.dumps(body)


def _field_error(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    where = ".".join(str(p) for p in error.get("loc", []) if p not in ("body", "query", "path"))
    return f"{where}: {error.get('msg', '')}" if where else str(error.get("msg", error))


def error_for(method: str, path: str, response: httpx.Response) -> FleetError:
    """The edgeml error an answer of 400 or more stands for."""
    status, message = response.status_code, detail(response)
    error: FleetError
    if status == 401:
        error = AuthError(f"the fleet server refused the token: {message}. "
                          "Log in again with 'edgeml-fleet login URL --token T' (or set EDGEML_FLEET_TOKEN)")
    elif status == 403:
        error = AuthError(f"not allowed: {message}")
    elif status == 404:
        error = NotFoundError(message)
    elif status == 409:
        error = ConflictError(message)
    elif status in (400, 413, 422):
        error = InvalidRequestError(f"{method} {path} refused ({status}): {message}")
    elif status == 429 or status >= 500:
        transient = TransientFleetError(f"{method} {path}: the fleet server answered {status} ({message}); "
                                        "try again later, and look at the server's log if it persists")
        transient.retry_after = response.headers.get("retry-after")
        error = transient
    else:
        error = FleetError(f"{method} {path} failed ({status}): {message}")
    error.status_code = status
    return error


class FleetHttp:
    """Bearer-token HTTP to one fleet server; JSON in and out, errors mapped, reads retried."""

    def __init__(self, config: ClientConfig, *, timeout: float = 30.0, retry: Retry | None = None,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.retry = retry or Retry()
        self._sleep = sleep
        self._http = httpx.Client(base_url=config.url.rstrip("/"), timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {config.token}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.TransportError) -> TransientFleetError:
        return TransientFleetError(f"cannot reach the fleet server at {self.config.url} ({exc}): is it running "
                                   "('edgeml-fleet serve') and is the URL right ('edgeml-fleet login')?")

    def _once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise error_for(method, path, response)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer (bytes for other content types); GETs retried while transient."""
        attempts = self.retry.attempts if method.upper() in RETRIED_METHODS else 1
        attempt = 0
        while True:
            try:
                response = self._once(method, path, **kwargs)
            except TransientFleetError as exc:
                attempt += 1
                if attempt >= attempts:
                    raise
                self._sleep(self.retry.delay(attempt - 1, exc.retry_after))
                continue
            if response.headers.get("content-type", "").startswith("application/json"):
                return response.json()
            return response.content

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params={k: v for k, v in params.items() if v is not None})

    def upload(self, path: str, file: Path) -> Any:
        """Stream ``file`` as the body (never read whole into memory); not retried."""
        with open(file, "rb") as f:
            return self.request("POST", path, content=f, headers={"Content-Type": "application/octet-stream"})

    def pages(self, path: str, *, limit: int = 500, items: str = "items", **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a list endpoint: a page (``{<items>: [...], next_cursor}``) is followed to the next
        while ``next_cursor`` is set; a plain list (a server without pages for this endpoint) is all of it."""
        cursor: str | None = None
        while True:
            page = self.get(path, limit=limit, cursor=cursor, **params)
            if isinstance(page, list):
                yield from page
                return
            yield from page[items]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def download(self, path: str, dest: Path) -> str:
        """Stream a GET's body into ``dest`` (through a temporary file and a rename); returns its sha256."""
        digest = hashlib.sha256()
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for("GET", path, response)
                with open(tmp, "wb") as out:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
            os.replace(tmp, dest)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        finally:
            tmp.unlink(missing_ok=True)
        return digest.hexdigest()
