"""What a request and its answer are, whichever protocol carries them (the agent's own API or the Open
Inference Protocol): :class:`Request`, :class:`Response`, the decoded :class:`Call`, :class:`HttpError`
and the JSON helpers both protocols share, so neither protocol module imports the other."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edgeml.arrays import Array

JSON = "application/json"
MAX_NAME_CHARS = 256              # an input name in a request
MAX_TENSOR_DIMS = 64              # numpy's own limit; deeper JSON nesting is refused with a 400
SESSION_HEADER = "x-session-id"


@dataclass
class Request:
    method: str
    path: str
    headers: Mapping[str, str]           # lower-case names
    body: bytes = b""
    received: float = 0.0                # perf_counter() when the request line arrived (0: unknown)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    # Bookkeeping the server runs once the answer is on the wire (observers: metrics, telemetry,
    # an update's health watch), so the client does not wait for it.
    after: Callable[[], None] | None = None


@dataclass
class Call:
    """One inference request, decoded and protocol-neutral."""

    arrays: dict[str, Array]
    text: object = None                  # strings for the bundle's tokenizer (None: no text)
    session: str | None = None           # the client's stream of a stateful model
    reset: bool = False                  # start the session over before this call
    end: bool = False                    # forget the session after this call
    options: dict[str, object] = field(default_factory=dict)   # the protocol's own (e.g. outputs asked for)


class HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str = "bad_input") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def json_response(status: int, data: object) -> Response:
    """A JSON answer that strict parsers accept: NaN and ±Infinity (which Python would write as bare
    ``NaN``/``Infinity``, not JSON) become ``null``."""
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(data), separators=(",", ":"), allow_nan=False)
    return Response(status, text.encode())


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def error_response(status: int, message: str) -> Response:
    return json_response(status, {"error": message, "status": status})


def check_method(req: Request, allowed: str) -> None:
    if req.method != allowed:
        raise HttpError(405, f"{req.method} is not allowed on {req.path}; use {allowed}")


def parse_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except RecursionError:
        raise HttpError(400, "the JSON body is nested too deeply; a tensor has at most "
                             f"{MAX_TENSOR_DIMS} dimensions") from None
    except ValueError as exc:   # also a number of thousands of digits, or bytes that are not UTF-8
        raise HttpError(400, f"the body is not valid JSON ({clip(str(exc))})") from None


def clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_names(arrays: Mapping[str, object]) -> None:
    """Input names are echoed in error messages: a long one is refused here rather than sent back."""
    for name in arrays:
        if len(name) > MAX_NAME_CHARS:
            raise HttpError(400, f"an input name is {len(name)} characters long; at most {MAX_NAME_CHARS} "
                                 f"are accepted (see GET /v1/models/{{name}} for the model's input names)")
