"""The local inference API, independent of the HTTP server that carries it.

``Api.handle(Request) -> Response`` routes, decodes inputs (JSON nested lists, ``.npy``, ``.npz``),
runs the model and encodes outputs as the client's ``Accept`` asks. Every bad input becomes a 4xx
with a message naming the problem; only a failure inside the runtime is a 500. A 4xx is the client's
mistake, never the model's: it is counted apart (``Metrics.count_rejected``) and the registry's observers
(metrics, telemetry, an update's health watch) never see it. JSON answers are strict JSON (NaN -> null).
"""

from __future__ import annotations

import hmac
import io
import json
import math
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from edgeml.arrays import Array
from edgeml.errors import InferenceInputError
from edgeml.jsontypes import JSON as JSONValue
from edgeml_agent import npy
from edgeml_agent.metrics import Metrics
from edgeml_agent.registry import LoadedModel, ModelRegistry, Observation, UnknownModelError

Feeds = dict[str, Array]

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
MAX_NPZ_EXPANDED = 256 << 20      # inflated size of a compressed .npz body
MAX_NAME_CHARS = 256              # an input name in a request
MAX_TENSOR_DIMS = 64              # numpy's own limit; deeper JSON nesting is refused with a 400


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


class Api:
    def __init__(self, registry: ModelRegistry, metrics: Metrics, api_token: str | None = None,
                 status: Callable[[], Mapping[str, JSONValue]] | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.api_token = api_token
        self.status: Callable[[], Mapping[str, JSONValue]] = status or dict  # extra /healthz fields (daemon state)
        self.draining = False

    # -- entry points --------------------------------------------------------------------------------
    def authorize(self, path: str, headers: Mapping[str, str]) -> Response | None:
        """None when allowed; a 401 response otherwise. /healthz is always open."""
        if self.api_token is None or path == "/healthz":
            return None
        given = headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_token.encode()):
            return None
        resp = error_response(401, "missing or wrong API token: send 'Authorization: Bearer <api_token>'")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="edgeml-agent"'
        return resp

    def handle(self, req: Request) -> Response:
        try:
            resp = self._route(req)
        except HttpError as exc:
            resp = error_response(exc.status, exc.message)
        self.metrics.count_http(resp.status)
        return resp

    # -- routing -------------------------------------------------------------------------------------
    def _route(self, req: Request) -> Response:
        path = req.path.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        if parts == ["healthz"]:
            self._method(req, "GET")
            state = "draining" if self.draining else "ok"
            return json_response(503 if self.draining else 200,
                                 {"status": state, "models": self.registry.names(), **self.status()})
        if parts == ["metrics"]:
            self._method(req, "GET")
            return Response(200, self.metrics.render(self.registry).encode(), "text/plain; version=0.0.4")
        if parts[:2] == ["v1", "models"]:
            if len(parts) == 2:
                self._method(req, "GET")
                models = [m.describe() for m in self.registry.models()]
                failed = [{"name": n, "state": "failed", "error": e} for n, e in self.registry.failures().items()]
                return json_response(200, {"models": models, "failed": failed})
            if len(parts) == 3:
                self._method(req, "GET")
                return json_response(200, self._model(parts[2]).describe())
            if len(parts) == 4 and parts[3] == "infer":
                self._method(req, "POST")
                return self.infer(parts[2], req)
        raise HttpError(404, f"no such endpoint: {req.method} {path} "
                             "(see GET /v1/models, POST /v1/models/{name}/infer, /healthz, /metrics)")

    @staticmethod
    def _method(req: Request, allowed: str) -> None:
        if req.method != allowed:
            raise HttpError(405, f"{req.method} is not allowed on {req.path}; use {allowed}")

    def _model(self, name: str) -> LoadedModel:
        try:
            return self.registry.get(name)
        except UnknownModelError as exc:
            raise HttpError(404, str(exc), "unknown_model") from None

    # -- inference -----------------------------------------------------------------------------------
    def infer(self, name: str, req: Request) -> Response:
        try:
            with self.registry.acquire(name) as loaded:
                start = time.perf_counter()
                resp, error, feeds, outputs = self._infer(loaded, req)
                seconds = time.perf_counter() - start
        except UnknownModelError as exc:
            raise HttpError(404, str(exc), "unknown_model") from None
        if error is not None and resp.status < 500:
            # The client's mistake (bad input, an unacceptable Accept): counted apart, never shown to the
            # observers (health watch, telemetry, shadow), so no client can move a model's error rate.
            kind = error
            resp.after = lambda: self.metrics.count_rejected(loaded.name, loaded.version, kind)
            return resp
        observation = Observation(loaded.name, loaded.version, seconds, resp.status, error, feeds, outputs)
        resp.after = lambda: self.registry.notify(observation)
        return resp

    @staticmethod
    def _infer(loaded: LoadedModel, req: Request) -> tuple[Response, str | None, Feeds | None, Feeds | None]:
        feeds: dict[str, Array] | None = None
        try:
            feeds = decode_inputs(loaded, req)
            t0 = time.perf_counter()
            outputs = loaded.infer(feeds)
            model_ms = (time.perf_counter() - t0) * 1e3
            resp = encode_outputs(loaded, outputs, req.headers.get("accept", ""))
            # Server-Timing (W3C): what the runtime took, and the agent's whole time from request line
            # to response, so a client can tell runtime, agent and network/scheduling time apart.
            timing = f"model;dur={model_ms:.3f}"
            if req.received:
                timing += f", agent;dur={(time.perf_counter() - req.received) * 1e3:.3f}"
            resp.headers["Server-Timing"] = timing
            return resp, None, feeds, outputs
        except HttpError as exc:
            return error_response(exc.status, exc.message), exc.kind, feeds, None
        except InferenceInputError as exc:
            return error_response(400, str(exc)), "bad_input", feeds, None
        except Exception as exc:  # the runtime failed on inputs that passed the checks: not the client's fault
            return error_response(500, f"inference failed in {loaded.model.runtime}: {exc}"), "runtime", feeds, None


def decode_inputs(loaded: LoadedModel, req: Request) -> dict[str, Array]:
    ctype = req.headers.get("content-type", JSON).split(";", 1)[0].strip().lower()
    model = loaded.model
    specs = {s.name: s for s in model.backend.inputs}
    if not req.body:
        raise HttpError(400, "the request body is empty; send {\"inputs\": {name: nested lists}} or a .npy/.npz body")
    # `curl -d` labels JSON as a form; there is no form encoding of tensors, so read it as JSON.
    if ctype in (JSON, "text/json", "application/x-www-form-urlencoded", ""):
        try:
            doc = json.loads(req.body)
        except RecursionError:
            raise HttpError(400, "the JSON body is nested too deeply; a tensor has at most "
                                 f"{MAX_TENSOR_DIMS} dimensions") from None
        except ValueError as exc:   # also a number of thousands of digits, or bytes that are not UTF-8
            raise HttpError(400, f"the body is not valid JSON ({_clip(str(exc))})") from None
        raw = doc.get("inputs") if isinstance(doc, dict) else doc
        if raw is None:
            raise HttpError(400, "the JSON body needs an 'inputs' key: {\"inputs\": {name: nested lists}}")
        if not isinstance(raw, dict):
            if len(specs) != 1:
                raise HttpError(400, f"this model takes several inputs ({', '.join(specs)}): "
                                     "send 'inputs' as an object by input name")
            raw = {next(iter(specs)): raw}
        _check_names(raw)
        arrays = {n: _json_array(n, v, specs[n].dtype if n in specs else None) for n, v in raw.items()}
    elif ctype == NPY:
        if len(specs) != 1:
            raise HttpError(400, f"this model takes several inputs ({', '.join(specs)}): send an .npz body "
                                 f"(Content-Type {NPZ}) with one array per input name")
        arrays = {next(iter(specs)): _load_npy(req.body)}
    elif ctype == NPZ:
        arrays = _load_npz(req.body)
        _check_names(arrays)
    else:
        raise HttpError(415, f"unsupported Content-Type '{ctype}'; use {JSON}, {NPY} or {NPZ}")
    return model.backend.check_feeds(arrays)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _check_names(arrays: Mapping[str, object]) -> None:
    """Input names are echoed in error messages: a long one is refused here rather than sent back."""
    for name in arrays:
        if len(name) > MAX_NAME_CHARS:
            raise HttpError(400, f"an input name is {len(name)} characters long; at most {MAX_NAME_CHARS} "
                                 f"are accepted (see GET /v1/models/{{name}} for the model's input names)")


def _json_array(name: str, value: object, dtype: str | None) -> Array:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        raise HttpError(400, f"input '{name}' is not a rectangular array of at most {MAX_TENSOR_DIMS} "
                             "dimensions (rows of different lengths, or nested too deeply)") from None
    if arr.dtype.kind not in "biuf":
        raise HttpError(400, f"input '{name}' must hold numbers, not {arr.dtype} values")
    if dtype is not None:
        want = np.dtype(dtype)
        if want.kind in "iu" and arr.dtype.kind == "f":
            raise HttpError(400, f"input '{name}' holds floating-point numbers; the model wants {want} (integers)")
        if want.kind in "biuf":
            arr = arr.astype(want, copy=False)
    return arr


def _load_npy(body: bytes) -> Array:
    try:
        return npy.loads(body)
    except npy.NpyError as exc:
        raise HttpError(400, f"the body is not a valid .npy array ({exc})") from None


def _load_npz(body: bytes) -> dict[str, Array]:
    """An .npz is a zip of .npy files. Sizes are checked before anything is inflated (a compressed
    body of a few KB can claim gigabytes), then each member goes through the fast .npy reader."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            members = zf.infolist()
            expanded = sum(m.file_size for m in members)
            if expanded > MAX_NPZ_EXPANDED:
                raise HttpError(413, f"the .npz expands to {expanded} bytes, over the {MAX_NPZ_EXPANDED}-byte limit")
            arrays = {}
            for m in members:
                name = m.filename[:-4] if m.filename.endswith(".npy") else m.filename
                arrays[name] = npy.loads(zf.read(m))
            return arrays
    except HttpError:
        raise
    except (zipfile.BadZipFile, npy.NpyError, ValueError, OSError, EOFError) as exc:
        raise HttpError(400, f"the body is not a valid .npz archive ({type(exc).__name__}: {exc})") from None


def encode_outputs(loaded: LoadedModel, outputs: Mapping[str, Array], accept: str) -> Response:
    accept = accept.lower()
    if NPZ in accept:
        buf = io.BytesIO()
        np.savez(buf, **dict(outputs))  # type: ignore[arg-type]
        return Response(200, buf.getvalue(), NPZ)
    if NPY in accept:
        if len(outputs) != 1:
            raise HttpError(406, f"the model has {len(outputs)} outputs; ask for Accept: {NPZ} or {JSON}")
        return Response(200, npy.dumps(next(iter(outputs.values()))), NPY)
    data = {"model": loaded.name, "version": loaded.version,
            "outputs": {n: _json_values(a) for n, a in outputs.items()}}
    return json_response(200, data)


def _json_values(arr: Array) -> object:
    """Nested lists of the array's values; NaN and ±Infinity as ``null`` (JSON has no such numbers: ask
    for ``Accept: application/x-npy`` or ``x-npz`` to get them exactly)."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        values = arr.astype(object)
        values[~np.isfinite(arr)] = None
        return values.tolist()
    return arr.tolist()
